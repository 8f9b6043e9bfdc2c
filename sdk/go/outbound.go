package thaw

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
)

// Outbound HTTP. Under thaw, http.DefaultTransport (and so http.Get,
// http.DefaultClient and any http.Client without a Transport of its own)
// sends requests through the host, which lets them reach only the origins
// the operator allowed for the function (thaw-runner --allow-outbound). Go's
// in-process wasip1 network reaches nothing outside the instance.

// The kinds of outbound failure; an *OutboundError wraps one, so test with
// errors.Is (through the *url.Error an http.Client returns).
var (
	// ErrOutboundDenied: the origin is not allowed for this function.
	ErrOutboundDenied = errors.New("outbound HTTP denied")
	// ErrOutboundLimit: this request already made as many outbound
	// requests as the host allows.
	ErrOutboundLimit = errors.New("outbound HTTP request limit reached")
	// ErrOutboundTimeout: no complete answer within the host's outbound
	// timeout or before the request's deadline.
	ErrOutboundTimeout = errors.New("outbound HTTP timed out")
	// ErrOutboundTooLarge: the answer is larger than the host accepts.
	ErrOutboundTooLarge = errors.New("outbound HTTP response too large")
	// ErrOutboundFailed: the origin could not be reached, or broke off.
	ErrOutboundFailed = errors.New("outbound HTTP failed")
	// ErrOutboundInvalid: the host could not read the request.
	ErrOutboundInvalid = errors.New("outbound HTTP request invalid")
	// ErrOutboundUnavailable: outbound HTTP is not available here (in
	// init, at build time).
	ErrOutboundUnavailable = errors.New("outbound HTTP unavailable")
)

// outcomeFailed is the host's code for ErrOutboundFailed.
const outcomeFailed = 5

// outcomeKinds maps the host's outcome codes (docs/abi.md) to their kinds;
// code 0 is an answer.
var outcomeKinds = []error{
	nil,
	ErrOutboundDenied,
	ErrOutboundLimit,
	ErrOutboundTimeout,
	ErrOutboundTooLarge,
	ErrOutboundFailed,
	ErrOutboundInvalid,
	ErrOutboundUnavailable,
}

// OutboundError is why the host sent no answer back: its Kind is one of
// the ErrOutbound values, and its message, from the host, names the
// origin.
type OutboundError struct {
	Kind    error
	Message string
}

func (e *OutboundError) Error() string { return "thaw: " + e.Message }

func (e *OutboundError) Unwrap() error { return e.Kind }

// Timeout reports whether the request timed out, as net.Error does.
func (e *OutboundError) Timeout() bool { return e.Kind == ErrOutboundTimeout }

// hostTransport is the http.RoundTripper of outbound HTTP: each request
// goes to the host as HTTP/1.1 in absolute form, and the host's whole
// answer comes back as HTTP/1.1. send is the host call.
type hostTransport struct {
	send func(request []byte) (outcome uint32, result []byte)
}

func (t hostTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	wire, err := outboundWire(r)
	if err != nil {
		return nil, err
	}
	outcome, result := t.send(wire)
	if outcome != 0 {
		kind := ErrOutboundFailed
		if int(outcome) < len(outcomeKinds) {
			kind = outcomeKinds[outcome]
		}
		return nil, &OutboundError{Kind: kind, Message: string(result)}
	}
	return http.ReadResponse(bufio.NewReader(bytes.NewReader(result)), r)
}

// outboundWire writes r as the host reads it: absolute form, the body
// whole and framed by Content-Length. It closes r's body, as a
// RoundTripper must.
func outboundWire(r *http.Request) ([]byte, error) {
	var body []byte
	if r.Body != nil {
		defer r.Body.Close()
		var err error
		if body, err = io.ReadAll(r.Body); err != nil {
			return nil, err
		}
	}
	if err := r.Context().Err(); err != nil {
		return nil, err
	}
	if r.URL == nil || r.URL.Host == "" || (r.URL.Scheme != "http" && r.URL.Scheme != "https") {
		return nil, &OutboundError{Kind: ErrOutboundInvalid, Message: "outbound HTTP needs an absolute http or https URL, not " + r.URL.String()}
	}
	out := r.Clone(r.Context())
	out.Body = nil
	if len(body) > 0 {
		out.Body = io.NopCloser(bytes.NewReader(body))
	}
	out.ContentLength = int64(len(body))
	out.TransferEncoding = nil
	out.Close = false
	var wire bytes.Buffer
	if err := out.WriteProxy(&wire); err != nil {
		return nil, err
	}
	return wire.Bytes(), nil
}
