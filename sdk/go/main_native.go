//go:build !wasip1

package thaw

import (
	"net/http"
	"net/http/cgi"
	"os"
)

// runMain serves one CGI request under a CGI server, else listens.
func runMain(h http.Handler) error {
	if os.Getenv("GATEWAY_INTERFACE") != "" {
		return cgi.Serve(h)
	}
	return http.ListenAndServe(listenAddress(), h)
}
