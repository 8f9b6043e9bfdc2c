package thaw

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"
)

// roundTrip runs serveOnce on raw and parses the response it wrote.
func roundTrip(t *testing.T, raw string, h http.Handler) (*http.Response, string, string) {
	t.Helper()
	var out bytes.Buffer
	if err := serveOnce(strings.NewReader(raw), &out, h); err != nil {
		t.Fatalf("serveOnce: %v", err)
	}
	wire := out.String()
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(wire)), nil)
	if err != nil {
		t.Fatalf("response does not parse: %v\n%s", err, wire)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return resp, string(body), wire
}

func TestGetRoundTrip(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/hello" || r.URL.Query().Get("q") != "1" || r.Host != "example.test" {
			t.Errorf("unexpected request: %s %s host=%q", r.Method, r.URL, r.Host)
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, "hello from thaw\n")
	})
	resp, body, wire := roundTrip(t, "GET /hello?q=1 HTTP/1.1\r\nHost: example.test\r\n\r\n", h)
	if resp.StatusCode != 200 || body != "hello from thaw\n" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if !strings.HasPrefix(wire, "HTTP/1.1 200 OK\r\n") {
		t.Errorf("status line: %q", wire)
	}
	if got := resp.Header.Get("Content-Length"); got != "16" {
		t.Errorf("Content-Length = %q, want 16", got)
	}
	if resp.ContentLength != 16 {
		t.Errorf("ContentLength = %d", resp.ContentLength)
	}
}

func TestPostBodyEcho(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading body: %v", err)
		}
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		w.WriteHeader(http.StatusCreated)
		w.Write(b)
	})
	payload := `{"name":"thaw","n":[1,2,3]}`
	raw := "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
		fmt.Sprint(len(payload)) + "\r\n\r\n" + payload
	resp, body, _ := roundTrip(t, raw, h)
	if resp.StatusCode != http.StatusCreated || body != payload {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
}

func TestHandlerPanicIs500(t *testing.T) {
	// Capture the stack trace the SDK logs to stderr.
	var logged bytes.Buffer
	logOutput = &logged
	t.Cleanup(func() { logOutput = os.Stderr })

	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Partial", "yes")
		w.Write([]byte("partial"))
		panic("boom in handler")
	})
	resp, body, _ := roundTrip(t, "GET /p HTTP/1.1\r\nHost: x\r\n\r\n", h)
	log := logged.String()

	if resp.StatusCode != 500 || body != "Internal Server Error\n" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if resp.Header.Get("X-Partial") != "" {
		t.Errorf("headers of the panicking handler leaked into the 500")
	}
	if !strings.Contains(log, "boom in handler") || !strings.Contains(log, "goroutine") {
		t.Errorf("stderr lacks panic value or stack: %q", log)
	}
}

func TestMalformedRequestIs400(t *testing.T) {
	called := false
	h := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called = true })
	for _, raw := range []string{"", "this is not http\r\n\r\n", "GET / HTTP/1.1\r\nBad Header\r\n\r\n"} {
		resp, body, _ := roundTrip(t, raw, h)
		if resp.StatusCode != 400 || !strings.HasPrefix(body, "thaw: bad request: ") {
			t.Errorf("%q: got %d %q", raw, resp.StatusCode, body)
		}
	}
	if called {
		t.Error("handler called for a malformed request")
	}
}

func TestNoHandlerIs500(t *testing.T) {
	resp, body, _ := roundTrip(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", nil)
	if resp.StatusCode != 500 || body != noHandlerMessage {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if !strings.Contains(body, "no handler registered (call thaw.Serve or thaw.HandleFunc from init)") {
		t.Errorf("body: %q", body)
	}
}

func TestHeadersPreserved(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Values("X-Multi"); !reflect.DeepEqual(got, []string{"a", "b"}) {
			t.Errorf("request X-Multi = %q", got)
		}
		if got := r.Header.Get("X-Custom"); got != "value with spaces" {
			t.Errorf("request X-Custom = %q", got)
		}
		w.Header().Set("X-Custom", "out")
		w.Header().Add("Set-Cookie", "a=1")
		w.Header().Add("Set-Cookie", "b=2")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Length", "999") // wrong on purpose: the SDK computes it
		w.WriteHeader(http.StatusTeapot)
		w.Header().Set("X-After", "ignored") // too late, as with net/http
		io.WriteString(w, "short and stout")
	})
	raw := "GET / HTTP/1.1\r\nHost: x\r\nX-Multi: a\r\nX-Multi: b\r\nX-Custom: value with spaces\r\n\r\n"
	resp, body, wire := roundTrip(t, raw, h)
	if resp.StatusCode != http.StatusTeapot || body != "short and stout" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if !strings.HasPrefix(wire, "HTTP/1.1 418 I'm a teapot\r\n") {
		t.Errorf("status line: %q", wire)
	}
	if got := resp.Header.Values("Set-Cookie"); !reflect.DeepEqual(got, []string{"a=1", "b=2"}) {
		t.Errorf("Set-Cookie = %q", got)
	}
	if resp.Header.Get("X-Custom") != "out" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("headers: %v", resp.Header)
	}
	if resp.Header.Get("X-After") != "" {
		t.Errorf("header set after WriteHeader was sent")
	}
	if resp.Header.Get("Content-Length") != "15" {
		t.Errorf("Content-Length = %q, want 15", resp.Header.Get("Content-Length"))
	}
	if resp.Header.Get("Content-Type") == "" {
		t.Errorf("Content-Type was not sniffed")
	}
}

func TestRemoteAddrFromEnv(t *testing.T) {
	t.Setenv(remoteAddrEnv, "203.0.113.7:4242")
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.RemoteAddr)
	})
	_, body, _ := roundTrip(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", h)
	if body != "203.0.113.7:4242" {
		t.Fatalf("RemoteAddr = %q", body)
	}
}

func TestEmptyBodyAndNoContent(t *testing.T) {
	empty := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	resp, body, _ := roundTrip(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", empty)
	if resp.StatusCode != 200 || body != "" || resp.Header.Get("Content-Length") != "0" {
		t.Errorf("empty handler: %d %q CL=%q", resp.StatusCode, body, resp.Header.Get("Content-Length"))
	}

	var writeErr error
	noContent := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
		_, writeErr = w.Write([]byte("x"))
	})
	resp, body, wire := roundTrip(t, "DELETE /x HTTP/1.1\r\nHost: x\r\n\r\n", noContent)
	if resp.StatusCode != 204 || body != "" || strings.Contains(wire, "Content-Length") {
		t.Errorf("204: %q", wire)
	}
	if writeErr != http.ErrBodyNotAllowed {
		t.Errorf("Write after 204: %v", writeErr)
	}
}

func TestHeadOmitsBody(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "twelve bytes")
	})
	var out bytes.Buffer
	if err := serveOnce(strings.NewReader("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"), &out, h); err != nil {
		t.Fatal(err)
	}
	wire := out.String()
	if !strings.HasSuffix(wire, "\r\n\r\n") || !strings.Contains(wire, "Content-Length: 12\r\n") {
		t.Fatalf("HEAD response: %q", wire)
	}
}

func TestRequestContextCancelledAfterHandler(t *testing.T) {
	var r0 *http.Request
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Context().Err() != nil {
			t.Error("context cancelled during the handler")
		}
		r0 = r
	})
	roundTrip(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", h)
	if r0.Context().Err() == nil {
		t.Error("context still live after the handler returned")
	}
}

func TestParseEnviron(t *testing.T) {
	buf := []byte("A=1\x00EMPTY=\x00WITH_EQ=a=b\x00NOEQ\x00")
	got := parseEnviron(buf, 4)
	want := []string{"A=1", "EMPTY=", "WITH_EQ=a=b", "NOEQ"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("parseEnviron = %q, want %q", got, want)
	}
	if got := parseEnviron(nil, 0); len(got) != 0 {
		t.Errorf("empty: %q", got)
	}
	if got := parseEnviron([]byte("A=1\x00B=2\x00"), 1); !reflect.DeepEqual(got, []string{"A=1"}) {
		t.Errorf("count limit: %q", got)
	}
}

func TestReplaceEnviron(t *testing.T) {
	saved := os.Environ()
	t.Cleanup(func() { replaceEnviron(saved) })

	os.Setenv("THAW_TEST_STALE", "build-time")
	err := replaceEnviron([]string{"FUNCTION_MODE=live", "WITH_EQ=a=b", "NOEQ", "=skipped", "DUP=1", "NUL=a\x00b", "DUP=2"})
	if err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("a value with a NUL byte: error %v", err)
	}
	if v, ok := os.LookupEnv("THAW_TEST_STALE"); ok {
		t.Errorf("stale variable survived: %q", v)
	}
	if os.Getenv("FUNCTION_MODE") != "live" || os.Getenv("WITH_EQ") != "a=b" || os.Getenv("DUP") != "2" {
		t.Errorf("environment: %q", os.Environ())
	}
	if _, ok := os.LookupEnv("NUL"); ok {
		t.Errorf("a value with a NUL byte was set")
	}
	if got, want := os.Environ(), []string{"FUNCTION_MODE=live", "WITH_EQ=a=b", "DUP=2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("environment %q, want %q", got, want)
	}
	// The environment installed whole still takes changes one at a time.
	os.Setenv("LATER", "x")
	os.Unsetenv("DUP")
	if got, want := os.Environ(), []string{"FUNCTION_MODE=live", "WITH_EQ=a=b", "LATER=x"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after Setenv and Unsetenv: %q, want %q", got, want)
	}
}

// resetRegistry clears the package-level registration for a test.
func resetRegistry(t *testing.T) {
	t.Helper()
	mu.Lock()
	handler, warmups, warmedUp = nil, nil, false
	mu.Unlock()
	t.Cleanup(func() {
		mu.Lock()
		handler, warmups, warmedUp = nil, nil, false
		mu.Unlock()
	})
}

func TestServeTwicePanics(t *testing.T) {
	resetRegistry(t)
	HandleFunc(func(http.ResponseWriter, *http.Request) {})
	defer func() {
		v := recover()
		if v == nil || !strings.Contains(fmt.Sprint(v), "already registered") {
			t.Fatalf("second Serve: recover() = %v", v)
		}
	}()
	Serve(http.NotFoundHandler())
}

func TestRegisteredHandlerServes(t *testing.T) {
	resetRegistry(t)
	HandleFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "registered") })
	_, body, _ := roundTrip(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", registeredHandler())
	if body != "registered" {
		t.Fatalf("body = %q", body)
	}
}

func TestWarmupsRunInOrderOnce(t *testing.T) {
	resetRegistry(t)
	var order []int
	Warmup(func() { order = append(order, 1) })
	Warmup(func() { order = append(order, 2) })
	Warmup(func() { order = append(order, 3) })
	preSnapshot()
	preSnapshot()
	if !reflect.DeepEqual(order, []int{1, 2, 3}) {
		t.Fatalf("order = %v", order)
	}
}

func TestWarmupPanicPropagates(t *testing.T) {
	resetRegistry(t)
	Warmup(func() { panic("warmup exploded") })
	defer func() {
		if v := recover(); v != "warmup exploded" {
			t.Fatalf("recover() = %v", v)
		}
	}()
	preSnapshot()
	t.Fatal("preSnapshot returned after a panicking warm-up")
}

func TestPreSnapshotPrimesWithoutCallingTheFunctionsHandler(t *testing.T) {
	resetRegistry(t)
	HandleFunc(func(http.ResponseWriter, *http.Request) {
		t.Error("the function's handler ran at snapshot time")
	})
	Warmup(func() {})
	preSnapshot()
}

// countingWriter records the size of each Write, as the host sees them.
type countingWriter struct {
	bytes.Buffer
	writes []int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, len(p))
	return w.Buffer.Write(p)
}

func TestSmallResponseIsOneWriteAndLargeBodyFollowsTheHead(t *testing.T) {
	for _, size := range []int{0, 1, smallBody, smallBody + 1, 1 << 20} {
		want := strings.Repeat("x", size)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, want)
		})
		var out countingWriter
		if err := serveOnce(strings.NewReader("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), &out, h); err != nil {
			t.Fatalf("size %d: serveOnce: %v", size, err)
		}
		if size <= smallBody && len(out.writes) != 1 {
			t.Errorf("size %d: %d writes, want 1", size, len(out.writes))
		}
		if size > smallBody && (len(out.writes) != 2 || out.writes[1] != size) {
			t.Errorf("size %d: writes %v, want the head then the body", size, out.writes)
		}
		resp, err := http.ReadResponse(bufio.NewReader(&out.Buffer), nil)
		if err != nil {
			t.Fatalf("size %d: response does not parse: %v", size, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != want || resp.ContentLength != int64(size) {
			t.Errorf("size %d: status %d, %d-byte body, Content-Length %d", size, resp.StatusCode, len(body), resp.ContentLength)
		}
	}
}
