package thaw

import (
	"net/http"
	"runtime"
	"sync"
)

var (
	mu       sync.Mutex
	handler  http.Handler
	warmups  []func()
	warmedUp bool
)

// Serve registers h as the function's request handler. Call it exactly once,
// from an init() function of the main package; main itself stays empty. To
// serve several routes, register an [http.ServeMux].
//
// Serve panics if h is nil or if a handler was already registered (by Serve
// or [HandleFunc]).
func Serve(h http.Handler) {
	if h == nil {
		panic("thaw: Serve called with a nil handler")
	}
	mu.Lock()
	defer mu.Unlock()
	if handler != nil {
		panic("thaw: a handler is already registered; call thaw.Serve or thaw.HandleFunc only once (use an http.ServeMux to serve several routes)")
	}
	handler = h
}

// HandleFunc registers f as the function's request handler. It is shorthand
// for Serve(http.HandlerFunc(f)) and follows the same rules: call it once,
// from init().
func HandleFunc(f func(http.ResponseWriter, *http.Request)) {
	if f == nil {
		panic("thaw: HandleFunc called with a nil function")
	}
	Serve(http.HandlerFunc(f))
}

// Warmup registers f to run once at build time, after every package init()
// and just before the memory snapshot is taken. Warm-up functions run in the
// order they were registered. Use them to touch lazily built state (fill
// caches, run a request through the handler) so that the snapshot already
// holds it.
//
// A warm-up that panics makes the build fail; the panic is not recovered.
// Warm-up functions never run while serving requests.
func Warmup(f func()) {
	if f == nil {
		panic("thaw: Warmup called with a nil function")
	}
	mu.Lock()
	defer mu.Unlock()
	warmups = append(warmups, f)
}

// registeredHandler returns the handler registered with Serve, or nil.
func registeredHandler() http.Handler {
	mu.Lock()
	defer mu.Unlock()
	return handler
}

// preSnapshot runs the registered warm-up functions in order, then collects
// garbage so that restored instances start with a fresh GC budget, and
// primes the request path after that collection. It runs at most once.
// Panics propagate to the caller on purpose.
func preSnapshot() {
	mu.Lock()
	if warmedUp {
		mu.Unlock()
		return
	}
	warmedUp = true
	fns := warmups
	warmups = nil
	mu.Unlock()

	for _, f := range fns {
		f()
	}
	// The warm-up closures are no longer referenced (warmups was cleared
	// above), so whatever only they kept alive is freed here too.
	runtime.GC()
	primeServePath()
}
