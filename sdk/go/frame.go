package thaw

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"unsafe"
)

// This file holds the compact request ABI (export thaw_handle_compact,
// docs/abi.md#the-compact-entry-point): the host hands over the request as
// length-prefixed fields it has already parsed and checked, and takes the
// response back the same way, so that neither side parses HTTP/1.1 text.
//
// Every integer is little-endian; a string is a u32 length and its bytes.
//
//	request:  u32 head length, then the head:
//	          u64 body length, u32 environment count, u32 header count,
//	          method, request target, client address,
//	          environment count × "KEY=VALUE",
//	          header count × (canonical name, value);
//	          then the body.
//	response: u32 head length, then the head:
//	          u32 status, u32 header count, header count × (name, value);
//	          then the body.

// maxFrameHead bounds the request head the SDK accepts; the host's own
// limits on headers are far lower.
const maxFrameHead = 16 << 20

// errMalformedFrame is wrapped by every error about the frame's layout.
var errMalformedFrame = errors.New("malformed request frame")

// frameFields reads a frame's head field by field. The first fault sticks;
// later reads return zero values.
type frameFields struct {
	rest string
	err  error
}

func (f *frameFields) fail(what string) {
	if f.err == nil {
		f.err = fmt.Errorf("%w: %s", errMalformedFrame, what)
	}
}

func (f *frameFields) u32(what string) uint32 {
	if f.err != nil || len(f.rest) < 4 {
		f.fail(what + " is cut short")
		return 0
	}
	s := f.rest
	v := uint32(s[0]) | uint32(s[1])<<8 | uint32(s[2])<<16 | uint32(s[3])<<24
	f.rest = s[4:]
	return v
}

func (f *frameFields) u64(what string) uint64 {
	low, high := f.u32(what), f.u32(what)
	return uint64(high)<<32 | uint64(low)
}

func (f *frameFields) str(what string) string {
	n := f.u32(what)
	if f.err != nil || uint64(n) > uint64(len(f.rest)) {
		f.fail(what + " runs past the head")
		return ""
	}
	v := f.rest[:n]
	f.rest = f.rest[n:]
	return v
}

// count reads a count of entries of at least minSize bytes each, refusing
// one the rest of the head cannot hold (so that it sizes no allocation).
func (f *frameFields) count(what string, minSize int) int {
	n := f.u32(what)
	if f.err == nil && uint64(n) > uint64(len(f.rest)/minSize) {
		f.fail(what + " exceeds what the head holds")
		return 0
	}
	return int(n)
}

// readRequestFrame reads one request frame from in. It returns the request,
// whose body reads on from in, and the instance's environment.
func readRequestFrame(in io.Reader) (*http.Request, []string, error) {
	var size [4]byte
	if _, err := io.ReadFull(in, size[:]); err != nil {
		return nil, nil, fmt.Errorf("%w: reading its length: %v", errMalformedFrame, err)
	}
	headLen := binary.LittleEndian.Uint32(size[:])
	if headLen > maxFrameHead {
		return nil, nil, fmt.Errorf("%w: a head of %d bytes is over the %d allowed", errMalformedFrame, headLen, maxFrameHead)
	}
	head := make([]byte, headLen)
	if _, err := io.ReadFull(in, head); err != nil {
		return nil, nil, fmt.Errorf("%w: reading its head: %v", errMalformedFrame, err)
	}
	// Every field is a substring of this one string, with no copy each:
	// head is never written again.
	f := frameFields{rest: unsafe.String(unsafe.SliceData(head), len(head))}

	bodyLen := f.u64("the body length")
	envCount := f.count("the environment count", 4)
	headerCount := f.count("the header count", 8)
	method := f.str("the method")
	target := f.str("the request target")
	remoteAddr := f.str("the client address")
	env := make([]string, envCount)
	for i := range env {
		env[i] = f.str("an environment entry")
	}
	header := make(http.Header, headerCount)
	// One backing array for the values, as net/textproto does.
	values := make([]string, headerCount)
	var host string
	for i := range values {
		name := textproto.CanonicalMIMEHeaderKey(f.str("a header name"))
		value := f.str("a header value")
		if name == "Host" {
			// As http.ReadRequest does: Host moves out of the header.
			if host == "" {
				host = value
			}
			continue
		}
		values[i] = value
		if have, ok := header[name]; ok {
			header[name] = append(have, value)
		} else {
			header[name] = values[i : i+1 : i+1]
		}
	}
	if f.err == nil && f.rest != "" {
		f.fail(strconv.Itoa(len(f.rest)) + " bytes follow the last header")
	}
	if f.err != nil {
		return nil, nil, f.err
	}
	if bodyLen > 1<<62 {
		return nil, nil, fmt.Errorf("%w: a body of %d bytes", errMalformedFrame, bodyLen)
	}
	if method == "" || strings.ContainsAny(method, " \t\r\n") {
		return nil, nil, fmt.Errorf("%w: invalid method %q", errMalformedFrame, method)
	}
	u, err := parseRequestTarget(target)
	if err != nil {
		return nil, nil, err
	}
	if host == "" {
		host = u.Host
	}
	// As http.ReadRequest does (RFC 7234, section 5.4).
	if pragma, ok := header["Pragma"]; ok && len(pragma) > 0 && pragma[0] == "no-cache" {
		if _, ok := header["Cache-Control"]; !ok {
			header["Cache-Control"] = []string{"no-cache"}
		}
	}
	req := &http.Request{
		Method:        method,
		URL:           u,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        header,
		Body:          http.NoBody,
		ContentLength: int64(bodyLen),
		Host:          host,
		RemoteAddr:    remoteAddr,
		RequestURI:    target,
	}
	if bodyLen > 0 {
		req.Body = io.NopCloser(io.LimitReader(in, int64(bodyLen)))
	}
	return req, env, nil
}

// parseRequestTarget is url.ParseRequestURI, which costs a few microseconds
// of a guest's request, with a shortcut for the common target: a path that
// needs no unescaping and an optional query without control characters,
// which url.ParseRequestURI would keep as they are. Anything else goes to
// url.ParseRequestURI itself.
func parseRequestTarget(target string) (*url.URL, error) {
	path, query, hasQuery := strings.Cut(target, "?")
	if path == "" || path[0] != '/' || !isPlainPath(path) || !isPlainQuery(query) {
		return url.ParseRequestURI(target)
	}
	// As url.ParseRequestURI does: a lone '?' at the end is a forced query.
	return &url.URL{Path: path, RawQuery: query, ForceQuery: hasQuery && query == ""}, nil
}

// isPlainPath reports whether url.ParseRequestURI would take path as the
// URL's Path unchanged and leave its RawPath empty: every byte is one that
// net/url's path escaping leaves alone (letters, digits and "-_.~$&+,/:;=@").
func isPlainPath(path string) bool {
	for i := 0; i < len(path); i++ {
		c := path[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-_.~$&+,/:;=@", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// isPlainQuery reports whether the query holds no byte url.ParseRequestURI
// refuses: an ASCII control character.
func isPlainQuery(query string) bool {
	for i := 0; i < len(query); i++ {
		if c := query[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// serveFrame reads one request frame from in, makes its environment the
// process's, serves it with h and writes one response frame to out. A nil h
// answers 500. It returns the error of writing the response, if any; every
// other failure becomes an HTTP error response.
func serveFrame(in io.Reader, out io.Writer, h http.Handler) error {
	req, env, err := readRequestFrame(in)
	if err == nil {
		if envErr := replaceEnviron(env); envErr != nil {
			fmt.Fprintln(logOutput, envErr)
		}
	}
	return respond(req, err, h).writeFrameTo(out, req)
}

// writeFrameTo writes the buffered response as one response frame. req may
// be nil (the request could not be read).
func (rw *responseWriter) writeFrameTo(out io.Writer, req *http.Request) error {
	code, h, body := rw.finish(req)
	var msg bytes.Buffer
	msg.Grow(512)
	msg.Write([]byte{0, 0, 0, 0}) // the head's length, set below
	appendU32(&msg, uint32(code))
	count := 0
	for name, values := range h {
		if validFieldName(name) {
			count += len(values)
		}
	}
	appendU32(&msg, uint32(count))
	for name, values := range h {
		if !validFieldName(name) {
			continue
		}
		for _, v := range values {
			appendString(&msg, name)
			// As http.Header.Write does.
			appendString(&msg, textproto.TrimString(headerNewlineToSpace.Replace(v)))
		}
	}
	binary.LittleEndian.PutUint32(msg.Bytes(), uint32(msg.Len()-4))
	return writeMessage(out, &msg, body)
}

// headerNewlineToSpace is the replacement http.Header.Write applies to
// values, so that a value cannot start a header of its own.
var headerNewlineToSpace = strings.NewReplacer("\n", " ", "\r", " ")

// validFieldName reports whether name is an HTTP token (RFC 9110, section
// 5.1); http.Header.Write skips any other name, and so does writeFrameTo.
func validFieldName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case '0' <= c && c <= '9', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// appendRequestFrame appends the request frame of the given parts to dst.
// The host writes these; the SDK itself only to prime its request path.
func appendRequestFrame(dst *bytes.Buffer, method, target, remoteAddr string, env []string, header [][2]string, body []byte) {
	start := dst.Len()
	dst.Write([]byte{0, 0, 0, 0})
	appendU32(dst, uint32(len(body)))
	appendU32(dst, uint32(uint64(len(body))>>32))
	appendU32(dst, uint32(len(env)))
	appendU32(dst, uint32(len(header)))
	appendString(dst, method)
	appendString(dst, target)
	appendString(dst, remoteAddr)
	for _, kv := range env {
		appendString(dst, kv)
	}
	for _, nv := range header {
		appendString(dst, nv[0])
		appendString(dst, nv[1])
	}
	binary.LittleEndian.PutUint32(dst.Bytes()[start:], uint32(dst.Len()-start-4))
	dst.Write(body)
}

func appendU32(dst *bytes.Buffer, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	dst.Write(b[:])
}

func appendString(dst *bytes.Buffer, s string) {
	appendU32(dst, uint32(len(s)))
	dst.WriteString(s)
}
