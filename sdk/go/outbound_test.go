package thaw

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// fakeHost records what hostTransport sends and answers as told.
type fakeHost struct {
	sent    []byte
	outcome uint32
	result  string
}

func (h *fakeHost) client() *http.Client {
	return &http.Client{Transport: hostTransport{send: func(request []byte) (uint32, []byte) {
		h.sent = append([]byte(nil), request...)
		return h.outcome, []byte(h.result)
	}}}
}

func TestOutboundRequestGoesOutInAbsoluteFormWithContentLength(t *testing.T) {
	host := &fakeHost{result: "HTTP/1.1 201 Created\r\nX-Origin: yes\r\ncontent-length: 4\r\n\r\nmade"}
	client := host.client()
	// A body of unknown length, which Go would otherwise send chunked.
	resp, err := client.Post("http://api.test:8080/items?x=1", "text/plain", io.MultiReader(strings.NewReader("new "), strings.NewReader("item")))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 201 || string(body) != "made" || resp.Header.Get("X-Origin") != "yes" {
		t.Fatalf("got %d %q %v", resp.StatusCode, body, resp.Header)
	}
	sent, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(host.sent)))
	if err != nil {
		t.Fatalf("the host could not read %q: %v", host.sent, err)
	}
	if !strings.HasPrefix(string(host.sent), "POST http://api.test:8080/items?x=1 HTTP/1.1\r\n") {
		t.Errorf("request line: %q", host.sent)
	}
	if sent.ContentLength != 8 || len(sent.TransferEncoding) != 0 {
		t.Errorf("framing: length %d, transfer-encoding %v", sent.ContentLength, sent.TransferEncoding)
	}
	if got, _ := io.ReadAll(sent.Body); string(got) != "new item" {
		t.Errorf("body %q", got)
	}
}

func TestOutboundFailuresAreTypedErrorsNamingTheOrigin(t *testing.T) {
	for code, kind := range outcomeKinds[1:] {
		host := &fakeHost{outcome: uint32(code + 1), result: "outbound HTTP to http://api.test is not allowed"}
		_, err := host.client().Get("http://api.test/")
		if !errors.Is(err, kind) {
			t.Errorf("outcome %d: %v is not %v", code+1, err, kind)
		}
		if !strings.Contains(err.Error(), "thaw: outbound HTTP to http://api.test") {
			t.Errorf("outcome %d: message %q", code+1, err)
		}
		var timeout interface{ Timeout() bool }
		if errors.As(err, &timeout) && timeout.Timeout() != (kind == ErrOutboundTimeout) {
			t.Errorf("outcome %d: Timeout() = %v", code+1, timeout.Timeout())
		}
	}
	// A code this SDK does not know still fails, rather than passing.
	host := &fakeHost{outcome: 99, result: "new"}
	if _, err := host.client().Get("http://api.test/"); !errors.Is(err, ErrOutboundFailed) {
		t.Errorf("unknown outcome: %v", err)
	}
}

func TestOutboundHeadAnswerKeepsItsLengthWithoutABody(t *testing.T) {
	host := &fakeHost{result: "HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"}
	resp, err := host.client().Head("https://api.test/file")
	if err != nil {
		t.Fatal(err)
	}
	if resp.ContentLength != 1234 {
		t.Errorf("ContentLength = %d", resp.ContentLength)
	}
	if !strings.HasPrefix(string(host.sent), "HEAD https://api.test/file HTTP/1.1\r\n") {
		t.Errorf("request line: %q", host.sent)
	}
}
