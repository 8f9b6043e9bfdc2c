package thaw

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// hostRequest is a request as the runner's HTTP front has it: header names
// in lower case (hyper's), hop-by-hop headers and Content-Length dropped.
type hostRequest struct {
	method, target string
	header         [][2]string
	body           string
}

// text is the request as the front writes it for thaw_handle.
func (r hostRequest) text() string {
	var b strings.Builder
	b.WriteString(r.method + " " + r.target + " HTTP/1.1\r\n")
	for _, nv := range r.header {
		b.WriteString(nv[0] + ": " + nv[1] + "\r\n")
	}
	b.WriteString("Content-Length: " + strconv.Itoa(len(r.body)) + "\r\n\r\n" + r.body)
	return b.String()
}

// frame is the request as the front writes it for thaw_handle_compact:
// canonical names, and its own Content-Length.
func (r hostRequest) frame(remoteAddr string, env []string) *bytes.Buffer {
	var header [][2]string
	for _, nv := range r.header {
		header = append(header, [2]string{textproto.CanonicalMIMEHeaderKey(nv[0]), nv[1]})
	}
	header = append(header, [2]string{"Content-Length", strconv.Itoa(len(r.body))})
	var b bytes.Buffer
	appendRequestFrame(&b, r.method, r.target, remoteAddr, env, header, []byte(r.body))
	return &b
}

// seen is what a handler can observe of a request.
type seen struct {
	Method, URL, Host, RequestURI, Proto, RemoteAddr string
	Header                                           http.Header
	ContentLength                                    int64
	Body                                             string
	Close                                            bool
}

// parsedResponse is a response reduced to what a client sees.
type parsedResponse struct {
	Status int
	Header http.Header
	Body   string
}

// readResponseFrame parses a response frame as the host does.
func readResponseFrame(t *testing.T, raw []byte) parsedResponse {
	t.Helper()
	if len(raw) < 4 {
		t.Fatalf("response frame of %d bytes", len(raw))
	}
	headLen := binary.LittleEndian.Uint32(raw)
	f := frameFields{rest: string(raw[4 : 4+headLen])}
	status := int(f.u32("status"))
	n := f.count("headers", 8)
	header := make(http.Header)
	for i := 0; i < n; i++ {
		name := f.str("name")
		header.Add(name, f.str("value"))
	}
	if f.err != nil || f.rest != "" {
		t.Fatalf("response frame: %v, %d bytes left", f.err, len(f.rest))
	}
	return parsedResponse{status, header, string(raw[4+headLen:])}
}

func parseTextResponse(t *testing.T, raw []byte, method string) parsedResponse {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("text response: %v\n%q", err, raw)
	}
	body, _ := io.ReadAll(resp.Body)
	return parsedResponse{resp.StatusCode, resp.Header, string(body)}
}

func TestFrameAndTextServeTheSameRequestAndResponse(t *testing.T) {
	t.Setenv(remoteAddrEnv, "198.51.100.4:5000")
	requests := []hostRequest{
		{"GET", "/hello?q=1", [][2]string{{"host", "example.test"}, {"user-agent", "curl/8"}, {"accept", "*/*"}}, ""},
		{"POST", "/echo?x=1&x=2", [][2]string{
			{"host", "a.example:8080"}, {"content-type", "application/json"},
			{"x-multi", "one"}, {"x-multi", "two"}, {"pragma", "no-cache"}, {"www-authenticate", "z"},
		}, `{"k":"v"}`},
		{"HEAD", "/caf%C3%A9/%2F", [][2]string{{"host", "h"}}, ""},
		{"DELETE", "/no-host", nil, ""},
		{"PUT", "/big", [][2]string{{"host", "h"}}, strings.Repeat("b", 3*smallBody)},
		{"OPTIONS", "*", [][2]string{{"host", "h"}}, ""},
	}
	handlers := map[string]http.HandlerFunc{
		"plain": func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello\n") },
		"headers": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Add("Set-Cookie", "a=1")
			w.Header().Add("Set-Cookie", "b=2")
			w.Header().Set("X-Split", "line\r\nInjected: yes")
			w.Header()["Bad Name"] = []string{"dropped"}
			w.Header().Set("X-Padded", "  padded  ")
			w.Header().Set("Transfer-Encoding", "chunked")
			w.WriteHeader(http.StatusCreated)
			io.WriteString(w, "<html></html>")
		},
		"no content": func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) },
		"echo":       func(w http.ResponseWriter, r *http.Request) { io.Copy(w, r.Body) },
		"panic":      func(w http.ResponseWriter, r *http.Request) { panic("boom") },
	}
	logOutput = io.Discard
	t.Cleanup(func() { logOutput = os.Stderr })
	for _, req := range requests {
		for name, handle := range handlers {
			var saw []seen
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				saw = append(saw, seen{r.Method, r.URL.String(), r.Host, r.RequestURI, r.Proto, r.RemoteAddr,
					r.Header, r.ContentLength, string(body), r.Close})
				r.Body = io.NopCloser(bytes.NewReader(body))
				handle(w, r)
			})
			var text, frame bytes.Buffer
			if err := serveOnce(strings.NewReader(req.text()), &text, h); err != nil {
				t.Fatal(err)
			}
			if err := serveFrame(req.frame("198.51.100.4:5000", os.Environ()), &frame, h); err != nil {
				t.Fatal(err)
			}
			if len(saw) != 2 || !reflect.DeepEqual(saw[0], saw[1]) {
				t.Errorf("%s %s: the handler saw\n text  %+v\n frame %+v", req.method, req.target, saw[0], saw[len(saw)-1])
			}
			got, want := readResponseFrame(t, frame.Bytes()), parseTextResponse(t, text.Bytes(), req.method)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s %s, handler %q: responses differ\n frame %+v\n text  %+v", req.method, req.target, name, got, want)
			}
		}
	}
}

func TestFrameCarriesTheEnvironment(t *testing.T) {
	saved := os.Environ()
	t.Cleanup(func() { replaceEnviron(saved) })
	os.Setenv("THAW_TEST_STALE", "build-time")
	var got []string
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = []string{os.Getenv("MODE"), os.Getenv("WITH_EQ"), os.Getenv("THAW_TEST_STALE")}
	})
	req := hostRequest{"GET", "/", [][2]string{{"host", "h"}}, ""}
	if err := serveFrame(req.frame("", []string{"MODE=live", "WITH_EQ=a=b", "=skipped"}), io.Discard, h); err != nil {
		t.Fatal(err)
	}
	if want := []string{"live", "a=b", ""}; !reflect.DeepEqual(got, want) {
		t.Errorf("environment seen by the handler: %q, want %q", got, want)
	}
}

func TestMalformedFramesAre400AndNeverReachTheHandler(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("handler ran for a malformed frame: %s %s", r.Method, r.URL)
	})
	good := hostRequest{"POST", "/x", [][2]string{{"host", "h"}, {"x-a", "1"}}, "body"}.frame("1.2.3.4:5", []string{"A=1"}).Bytes()
	headEnd := 4 + int(binary.LittleEndian.Uint32(good))
	var cases [][]byte
	// Every cut inside the head.
	for n := 0; n < headEnd; n++ {
		cases = append(cases, good[:n])
	}
	withHead := func(head []byte) []byte {
		return append(binary.LittleEndian.AppendUint32(nil, uint32(len(head))), head...)
	}
	u32 := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	str := func(s string) []byte { return append(u32(uint32(len(s))), s...) }
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	cases = append(cases,
		// Counts that would size a huge allocation.
		withHead(join(u32(0), u32(0), u32(0xFFFFFFFF), u32(0))),
		withHead(join(u32(0), u32(0), u32(0), u32(0x7FFFFFFF))),
		// A string that runs past the head.
		withHead(join(u32(0), u32(0), u32(0), u32(0), u32(1000), []byte("GET"))),
		// Bytes after the last header.
		withHead(join(u32(0), u32(0), u32(0), u32(0), str("GET"), str("/"), str(""), []byte("junk"))),
		// A head over the limit.
		u32(maxFrameHead+1),
		// No method, a method with a space, a target that is no URI.
		withHead(join(u32(0), u32(0), u32(0), u32(0), str(""), str("/"), str(""))),
		withHead(join(u32(0), u32(0), u32(0), u32(0), str("G T"), str("/"), str(""))),
		withHead(join(u32(0), u32(0), u32(0), u32(0), str("GET"), str("no-slash"), str(""))),
	)
	for _, raw := range cases {
		var out bytes.Buffer
		if err := serveFrame(bytes.NewReader(raw), &out, h); err != nil {
			t.Fatal(err)
		}
		resp := readResponseFrame(t, out.Bytes())
		if resp.Status != http.StatusBadRequest || !strings.Contains(resp.Body, errMalformedFrame.Error()) && !strings.Contains(resp.Body, "invalid") {
			t.Errorf("frame %q: %d %q", raw, resp.Status, resp.Body)
		}
	}
	if _, _, err := readRequestFrame(bytes.NewReader(good[:headEnd-1])); !errors.Is(err, errMalformedFrame) {
		t.Errorf("a cut head: %v", err)
	}
}

// sameAsParseRequestURI fails t unless parseRequestTarget gives what
// url.ParseRequestURI gives for target: an equal URL, or an error for both.
func sameAsParseRequestURI(t *testing.T, target string) {
	t.Helper()
	want, wantErr := url.ParseRequestURI(target)
	got, err := parseRequestTarget(target)
	if (err != nil) != (wantErr != nil) || !reflect.DeepEqual(got, want) {
		t.Fatalf("target %q: got %#v, %v; url.ParseRequestURI gives %#v, %v", target, got, err, want, wantErr)
	}
}

func TestRequestTargetsParseAsNetURLParsesThem(t *testing.T) {
	for _, target := range []string{
		"/", "/hello/", "/a/b?x=1&y=2", "/a?", "/a??", "/a?b?c", "/?", "//double", "///triple",
		"/a%20b", "/a%2fb", "/bad%zz", "/a b", "/a#frag", "/a?q#frag", "/ünïcode",
		"*", "", "?", "relative", "http://example.com/x?y", "/a?\x01", "/a\x7f", "/a;b=c,d@e:f$&+",
	} {
		sameAsParseRequestURI(t, target)
	}
	// Every byte in the path and in the query, so that the shortcut's
	// character set can be no wider than net/url's.
	for c := range 256 {
		b := string([]byte{byte(c)})
		sameAsParseRequestURI(t, "/a"+b+"b")
		sameAsParseRequestURI(t, "/a"+b+"b?q="+b)
	}
	// Random targets over the bytes that matter most.
	const alphabet = "/?%#aZ09-_.~$&+,:;=@!*'() \x00\x1f\x7f\xc3"
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		b := make([]byte, 1+rng.IntN(12))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		if rng.IntN(2) == 0 {
			b[0] = '/'
		}
		sameAsParseRequestURI(t, string(b))
	}
}

func FuzzRequestTargetsParseAsNetURLParsesThem(f *testing.F) {
	for _, seed := range []string{"/", "/a?b", "/a?", "/%41", "/a b", "*"} {
		f.Add(seed)
	}
	f.Fuzz(sameAsParseRequestURI)
}
