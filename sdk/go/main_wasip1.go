package thaw

import (
	"net/http"
	"net/http/cgi"
)

// runMain serves one CGI request: a wasip1 command module gets one request
// per instance.
func runMain(h http.Handler) error {
	return cgi.Serve(h)
}
