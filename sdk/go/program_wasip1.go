package thaw

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"runtime"
	"sync"
	_ "unsafe" // for go:linkname
)

// This file lets an unmodified net/http program run as a thaw function.
// thaw's builder adds a file to such a program's main package (with
// `go build -overlay`, so the user's directory is untouched) whose init
// calls ServeProgram(main).
//
// Go's wasip1 port has an in-process network (net/net_fake.go): Listen
// registers the listener in net.sockets, and Dial connects to it without
// leaving the process. So at build time main runs until it listens, and the
// snapshot holds the program's server parked in Accept; each request is
// then forwarded to that listener, where the program's own http.Server, mux
// and middleware handle it.

// netSockets is the fake network's table: fakeSockAddr → *netFD.
//
//go:linkname netSockets net.sockets
var netSockets sync.Map

// listenerAddress is the address of a stream listener on the fake
// network, if main has opened one.
func listenerAddress() (string, bool) {
	var found string
	netSockets.Range(func(key, value any) bool {
		fake := reflect.ValueOf(value).Elem().FieldByName("fakeNetFD")
		// Connected sockets are in the table too; only listeners take
		// incoming connections.
		if !fake.IsValid() || fake.IsNil() || fake.Elem().FieldByName("incoming").IsNil() {
			return true
		}
		found = reflect.ValueOf(key).FieldByName("address").String()
		return false
	})
	return found, found != ""
}

// programYields bounds how long build-time init waits for main to listen.
const programYields = 1_000_000

// ServeProgram is for thaw's builder, not for hand-written code: it makes
// the running program's own HTTP server the function's handler. At build
// time it runs main in a goroutine until main listens on the in-process
// network; each request is then forwarded to that listener.
func ServeProgram(main func()) {
	Warmup(func() {
		go main()
		for range programYields {
			if address, ok := listenerAddress(); ok {
				Serve(proxyTo(address))
				return
			}
			runtime.Gosched()
		}
		panic(errors.New("thaw: main did not listen for HTTP (http.ListenAndServe, http.Serve or an http.Server) during init; build it as a command with --go-buildmode command"))
	})
}

// proxyTo forwards each request, as it came, to the program's listener
// over one in-process connection, and its answer back. Written out rather
// than an httputil.ReverseProxy, whose transport machinery (a connection
// pool, two goroutines per connection) cost 15% more guest CPU per request.
func proxyTo(address string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := net.Dial("tcp", address)
		if err != nil {
			http.Error(w, "thaw: the program's server is not listening: "+err.Error(), http.StatusBadGateway)
			return
		}
		defer conn.Close()
		// Request.Write adds Go's User-Agent to a request without one;
		// an empty value keeps the client's request as it was.
		if _, ok := r.Header["User-Agent"]; !ok {
			r.Header["User-Agent"] = []string{""}
		}
		// Concurrently: the program may answer before it reads the body.
		go func() { _ = r.Write(conn) }()
		answer, err := http.ReadResponse(bufio.NewReader(conn), r)
		if err != nil {
			http.Error(w, "thaw: the program's server gave no answer: "+err.Error(), http.StatusBadGateway)
			return
		}
		defer answer.Body.Close()
		for name, values := range answer.Header {
			w.Header()[name] = values
		}
		w.WriteHeader(answer.StatusCode)
		_, _ = io.Copy(w, answer.Body)
	})
}
