// An ordinary Go web server: no thaw SDK, nothing thaw-specific. thaw runs
// main at build time until it listens, snapshots the listening server, and
// hands each request to it.
package main

import (
	"encoding/json"
	"log"
	"net/http"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("hello from an unmodified net/http server\n"))
	})
	http.HandleFunc("GET /greet/{name}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"greeting": "hello, " + r.PathValue("name")})
	})
	log.Fatal(http.ListenAndServe(":8080", nil))
}
