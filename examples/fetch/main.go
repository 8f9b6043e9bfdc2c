// An edge function in front of an origin: each request is passed on to
// $UPSTREAM with an ordinary http.Client, and the origin's answer comes
// back with an X-Edge header. The host must allow the origin
// (--allow-outbound); every other origin is denied.
package main

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"

	"thaw.dev/thaw"
)

// client follows redirects as any Go client does; under thaw each hop is an
// outbound request of its own, checked against the allowed origins.
var client = &http.Client{}

func init() {
	thaw.HandleFunc(func(w http.ResponseWriter, r *http.Request) {
		// Read per request: configuration read in init() would be the build's.
		upstream := strings.TrimSuffix(os.Getenv("UPSTREAM"), "/")
		if upstream == "" {
			http.Error(w, "UPSTREAM is not set", http.StatusInternalServerError)
			return
		}
		// Whole, so that the client can send it again after a 307 or 308.
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		request, err := http.NewRequestWithContext(r.Context(), r.Method, upstream+r.URL.RequestURI(), bytes.NewReader(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if accept := r.Header.Get("Accept"); accept != "" {
			request.Header.Set("Accept", accept)
		}
		answer, err := client.Do(request)
		switch {
		case errors.Is(err, thaw.ErrOutboundTimeout):
			http.Error(w, err.Error(), http.StatusGatewayTimeout)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer answer.Body.Close()
		if contentType := answer.Header.Get("Content-Type"); contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.Header().Set("X-Edge", "thaw")
		w.WriteHeader(answer.StatusCode)
		io.Copy(w, answer.Body)
	})
}

func main() { thaw.Main() }
