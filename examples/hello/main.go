// Command hello is the smallest thaw function: every request gets a
// plain-text greeting.
package main

import (
	"io"
	"net/http"

	"thaw.dev/thaw"
)

func init() {
	thaw.HandleFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "hello from thaw\n")
	})
}

func main() { thaw.Main() }
