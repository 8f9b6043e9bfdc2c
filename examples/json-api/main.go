// Command json-api is a small JSON API routed with http.ServeMux patterns.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"

	"thaw.dev/thaw"
)

// item is one entry of the in-memory catalogue.
type item struct {
	ID    int    `json:"id"`
	Name  string `json:"name"`
	Price int    `json:"price_cents"`
}

// items is built at init time, so it is part of the snapshot.
var items = map[int]item{
	1: {ID: 1, Name: "ice pick", Price: 1299},
	2: {ID: 2, Name: "snow shovel", Price: 2450},
	3: {ID: 3, Name: "thermos", Price: 1875},
}

func init() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", health)
	mux.HandleFunc("POST /echo", echo)
	mux.HandleFunc("GET /items/{id}", getItem)
	mux.HandleFunc("GET /env", env)
	mux.HandleFunc("POST /visits", visit)
	thaw.Serve(jsonErrors(mux))
}

func main() { thaw.Main() }

// visits counts POST /visits. Every request runs in a fresh instance
// restored from the snapshot, so every caller sees 1: no state leaks
// between requests.
var visits int

func visit(w http.ResponseWriter, r *http.Request) {
	visits++
	writeJSON(w, http.StatusOK, map[string]int{"visits": visits})
}

func health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// echo answers {"name":"x"} with {"greeting":"hello, x"}.
func echo(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name *string `json:"name"`
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	if err := dec.Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, "invalid JSON: "+err.Error())
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, "invalid JSON: trailing data after the object")
		return
	}
	if in.Name == nil || *in.Name == "" {
		writeError(w, http.StatusUnprocessableEntity, `field "name" is required`)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"greeting": "hello, " + *in.Name})
}

func getItem(w http.ResponseWriter, r *http.Request) {
	raw := r.PathValue("id")
	id, err := strconv.Atoi(raw)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("item id %q is not a number", raw))
		return
	}
	it, ok := items[id]
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("item %d not found", id))
		return
	}
	writeJSON(w, http.StatusOK, it)
}

// env shows that the environment is read per request, not frozen at build
// time.
func env(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"FUNCTION_MODE": os.Getenv("FUNCTION_MODE")})
}

// jsonErrors serves mux, but answers the requests that mux has no route for
// (404, and 405 when only the method is wrong) with JSON bodies instead of
// mux's plain-text ones.
func jsonErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r) // sets r.PathValue
			return
		}
		rec := &statusRecorder{header: make(http.Header)}
		h.ServeHTTP(rec, r)
		if allow := rec.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		if rec.code == http.StatusMethodNotAllowed {
			writeError(w, rec.code, fmt.Sprintf("method %s not allowed for %s", r.Method, r.URL.Path))
			return
		}
		writeError(w, rec.code, fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
}

// statusRecorder keeps the status and headers of mux's fallback handlers
// and drops their bodies.
type statusRecorder struct {
	header http.Header
	code   int
}

func (s *statusRecorder) Header() http.Header { return s.header }

func (s *statusRecorder) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	s.WriteHeader(http.StatusOK)
	return len(p), nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
