package thaw

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
)

// noHandlerMessage is the body of the 500 response sent when the module never
// registered a handler.
const noHandlerMessage = "thaw: no handler registered (call thaw.Serve or thaw.HandleFunc from init)\n"

// remoteAddrEnv names the environment variable through which the host passes
// the client's address.
const remoteAddrEnv = "THAW_REMOTE_ADDR"

// logOutput receives the SDK's own diagnostics (handler panics). Tests
// replace it.
var logOutput io.Writer = os.Stderr

// serveOnce reads exactly one HTTP/1.1 request from in, serves it with h and
// writes exactly one HTTP/1.1 response to out. A nil h answers 500. It returns
// the error of writing the response, if any; every other failure becomes an
// HTTP error response.
func serveOnce(in io.Reader, out io.Writer, h http.Handler) error {
	req, err := http.ReadRequest(bufio.NewReader(in))
	if err == nil {
		if addr := os.Getenv(remoteAddrEnv); addr != "" {
			req.RemoteAddr = addr
		}
	}
	return respond(req, err, h).writeTo(out, req)
}

// respond serves req with h, or answers why it cannot: 400 when the
// request could not be read (err), 500 when no handler is registered.
func respond(req *http.Request, err error, h http.Handler) *responseWriter {
	switch {
	case err != nil:
		return plainResponse(http.StatusBadRequest, "thaw: bad request: "+err.Error()+"\n")
	case h == nil:
		return plainResponse(http.StatusInternalServerError, noHandlerMessage)
	default:
		return runHandler(h, req)
	}
}

// runHandler calls h and turns a panic into a 500 response.
func runHandler(h http.Handler, req *http.Request) (rw *responseWriter) {
	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()
	req = req.WithContext(ctx)

	rw = newResponseWriter(req)
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				fmt.Fprintf(logOutput, "thaw: panic serving %s %s: %v\n%s", req.Method, req.RequestURI, v, debug.Stack())
			}
			rw = plainResponse(http.StatusInternalServerError, "Internal Server Error\n")
		}
	}()
	h.ServeHTTP(rw, req)
	return rw
}

// plainResponse builds a text/plain response the way http.Error does.
func plainResponse(code int, body string) *responseWriter {
	rw := newResponseWriter(nil)
	rw.header.Set("Content-Type", "text/plain; charset=utf-8")
	rw.header.Set("X-Content-Type-Options", "nosniff")
	rw.WriteHeader(code)
	rw.WriteString(body)
	return rw
}

// responseWriter is an http.ResponseWriter that buffers the status, headers
// and body until the handler returns.
type responseWriter struct {
	header      http.Header // what Header returns
	sent        http.Header // copy of header taken by WriteHeader
	status      int         // 0 until WriteHeader or the first Write
	body        bytes.Buffer
	written     int64 // bytes the handler wrote, including discarded HEAD bodies
	discardBody bool  // HEAD request: count the body but do not keep it
}

func newResponseWriter(req *http.Request) *responseWriter {
	return &responseWriter{
		header:      make(http.Header),
		discardBody: req != nil && req.Method == http.MethodHead,
	}
}

// Header returns the response headers; changes after the first Write or
// WriteHeader call have no effect, as with net/http.
func (rw *responseWriter) Header() http.Header { return rw.header }

// WriteHeader records the status code. Informational (1xx) codes are dropped
// because the response is buffered; later calls are ignored.
func (rw *responseWriter) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if rw.status != 0 || code < 200 {
		return
	}
	rw.status = code
	// Freeze the headers as net/http does: later changes to the map returned
	// by Header do not reach the response.
	rw.sent = rw.header.Clone()
}

// Write appends p to the buffered body, sending a 200 status first if none
// was set.
func (rw *responseWriter) Write(p []byte) (int, error) {
	if rw.status == 0 {
		rw.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(rw.status) {
		return 0, http.ErrBodyNotAllowed
	}
	rw.written += int64(len(p))
	if rw.discardBody {
		return len(p), nil
	}
	return rw.body.Write(p)
}

// WriteString is Write for strings, without a copy to a byte slice.
func (rw *responseWriter) WriteString(s string) (int, error) {
	if rw.status == 0 {
		rw.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(rw.status) {
		return 0, http.ErrBodyNotAllowed
	}
	rw.written += int64(len(s))
	if rw.discardBody {
		return len(s), nil
	}
	return rw.body.WriteString(s)
}

// Flush implements http.Flusher. It does nothing: the response is sent
// when the handler returns.
func (rw *responseWriter) Flush() {}

// bodyAllowed reports whether a response with this status may have a body.
func bodyAllowed(code int) bool {
	return code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
}

// finish settles what goes out: the status, the headers as sent and the
// body. req may be nil (the request could not be read).
func (rw *responseWriter) finish(req *http.Request) (int, http.Header, []byte) {
	code, h := rw.status, rw.sent
	if code == 0 {
		// The handler neither wrote nor called WriteHeader.
		code, h = http.StatusOK, rw.header.Clone()
	}
	// The keys are canonical already: map operations skip the
	// canonicalizing that Header.Del and Header.Set do on every call.
	delete(h, "Content-Length")
	delete(h, "Transfer-Encoding")
	delete(h, "Trailer")
	delete(h, "Connection")
	if bodyAllowed(code) {
		if _, ok := h["Content-Type"]; !ok && rw.body.Len() > 0 {
			h["Content-Type"] = []string{http.DetectContentType(rw.body.Bytes())}
		}
		h["Content-Length"] = []string{strconv.FormatInt(rw.written, 10)}
	}
	var body []byte
	if bodyAllowed(code) && !(req != nil && req.Method == http.MethodHead) {
		body = rw.body.Bytes()
	}
	return code, h, body
}

// writeTo writes the buffered response as one HTTP/1.1 message. req may be
// nil (the request could not be read).
func (rw *responseWriter) writeTo(out io.Writer, req *http.Request) error {
	code, h, body := rw.finish(req)
	text := http.StatusText(code)
	if text == "" {
		text = "status code " + strconv.Itoa(code)
	}
	// code has three digits: WriteHeader refuses any other.
	var msg bytes.Buffer
	msg.Grow(512)
	msg.WriteString("HTTP/1.1 ")
	msg.WriteString(strconv.Itoa(code))
	msg.WriteByte(' ')
	msg.WriteString(text)
	msg.WriteString("\r\n")
	if err := h.Write(&msg); err != nil {
		return err
	}
	msg.WriteString("\r\n")
	return writeMessage(out, &msg, body)
}

// writeMessage writes a response's head and then its body, the two in one
// write (one host call) when the body is small.
func writeMessage(out io.Writer, head *bytes.Buffer, body []byte) error {
	if len(body) <= smallBody {
		head.Write(body)
		body = nil
	}
	if _, err := out.Write(head.Bytes()); err != nil {
		return fmt.Errorf("thaw: writing response: %w", err)
	}
	if len(body) > 0 {
		if _, err := out.Write(body); err != nil {
			return fmt.Errorf("thaw: writing response: %w", err)
		}
	}
	return nil
}

// smallBody is the largest body that writeTo copies after the head rather
// than writing on its own.
const smallBody = 4096

// primeServePath serves one canned request through each entry point, with
// a handler of its own and never the function's, and discards the
// responses. Run just before the snapshot, it leaves in memory what every
// restored instance would otherwise build during its one request:
// net/textproto's table of common header names (built on first use), and a
// span per size class the request path allocates from (garbage collection
// released them).
func primeServePath() {
	prime := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		io.WriteString(w, r.URL.Path)
	})
	const text = "GET /thaw/prime HTTP/1.1\r\nHost: prime\r\nUser-Agent: thaw\r\nAccept: */*\r\n\r\n"
	var frame bytes.Buffer
	appendRequestFrame(&frame, "GET", "/thaw/prime", "", nil,
		[][2]string{{"Host", "prime"}, {"User-Agent", "thaw"}, {"Accept", "*/*"}}, nil)
	for _, err := range []error{
		serveOnce(strings.NewReader(text), io.Discard, prime),
		serveFrame(&frame, io.Discard, prime),
	} {
		if err != nil {
			panic("thaw: priming the request path: " + err.Error())
		}
	}
}

// parseEnviron splits the buffer filled by WASI environ_get (NUL-terminated
// "KEY=VALUE" strings) into at most count entries.
func parseEnviron(buf []byte, count int) []string {
	env := make([]string, 0, count)
	for len(buf) > 0 && len(env) < count {
		i := bytes.IndexByte(buf, 0)
		if i < 0 {
			i = len(buf)
		}
		env = append(env, string(buf[:i]))
		if i == len(buf) {
			break
		}
		buf = buf[i+1:]
	}
	return env
}

// replaceEnviron makes env the whole process environment. Entries without
// "=", with an empty key or with a NUL byte are skipped; of two entries
// with one key, the later wins.
func replaceEnviron(env []string) error {
	kept := make([]string, 0, len(env))
	index := make(map[string]int, len(env))
	var errs []error
	for _, kv := range env {
		k, _, ok := strings.Cut(kv, "=")
		switch {
		case !ok || k == "":
			continue
		case strings.IndexByte(kv, 0) >= 0:
			errs = append(errs, fmt.Errorf("thaw: setting %s: %w", k, syscall.EINVAL))
		default:
			if i, seen := index[k]; seen {
				kept[i] = kv
			} else {
				index[k] = len(kept)
				kept = append(kept, kv)
			}
		}
	}
	installEnviron(kept, index)
	return errors.Join(errs...)
}
