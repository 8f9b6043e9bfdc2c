// Package thaw is the Go SDK for thaw edge functions.
//
// A thaw function is an ordinary Go program built as a WASI reactor
// (GOOS=wasip1 GOARCH=wasm, -buildmode=c-shared). Its main package registers
// one [http.Handler] from init(); main only calls [Main], which serves when
// the same source is built as a program instead:
//
//	package main
//
//	import (
//		"fmt"
//		"net/http"
//
//		"thaw.dev/thaw"
//	)
//
//	func init() {
//		thaw.HandleFunc(func(w http.ResponseWriter, r *http.Request) {
//			fmt.Fprintln(w, "hello from thaw")
//		})
//	}
//
//	func main() { thaw.Main() }
//
// thaw runs _initialize (the Go runtime and every package init) once at build
// time, calls the pre-snapshot hook, and snapshots the module's memory. Each
// request then starts from a copy of that snapshot, so work done in init()
// (tables, compiled regexps, parsed templates) costs nothing per request.
//
// # ABI
//
// Importing this package adds three exports to the module:
//
//   - thaw_pre_snapshot, func(): called once by the snapshotter after
//     _initialize. It runs the functions registered with [Warmup], in order,
//     then runtime.GC(), so restored instances do not start right below the
//     GC trigger. A panic in a warm-up function is not recovered: it crashes
//     initialization and the build fails.
//   - thaw_handle, func(): serves one request. It refreshes the environment
//     from the host (WASI environ_sizes_get/environ_get), reads exactly one
//     HTTP/1.1 request from stdin, calls the registered handler, and writes
//     exactly one HTTP/1.1 response (status line, headers including
//     Content-Length, body) to stdout.
//   - thaw_handle_compact, func(): the same, but the request (with the
//     environment) and the response are length-prefixed fields that the host
//     has already parsed, so neither side parses HTTP text. thaw's runner
//     calls this one when the module has it.
//
// The handler's response is buffered in memory and written when the handler
// returns. A request that cannot be parsed gets 400 Bad Request; a handler
// that panics gets 500 Internal Server Error (the panic value and stack go to
// stderr); a module with no registered handler answers 500. If the
// environment variable THAW_REMOTE_ADDR is set, it becomes
// [http.Request.RemoteAddr]. The request's context is cancelled when the
// handler returns.
//
// # Outbound HTTP
//
// Under thaw, [http.DefaultTransport] sends requests through the host, so
// http.Get, http.DefaultClient and any http.Client without a Transport of
// its own reach the origins the host allows for the function and nothing
// else. A refused request fails at once with an [*OutboundError] naming the
// origin; test its kind with errors.Is against [ErrOutboundDenied],
// [ErrOutboundLimit], [ErrOutboundTimeout], [ErrOutboundTooLarge] and the
// others. Requests are made one at a time and bodies are buffered whole;
// init cannot call out ([ErrOutboundUnavailable]).
//
// # Caveats
//
//   - The runtime's randomness (math/rand, hash/maphash seeds, new maps'
//     seeds and iteration order) is reseeded from the host at the start of
//     every request, so no two instances share it. Maps built in init()
//     keep the seeds they were built with, and generators the program
//     seeded itself are its own. crypto/rand asks the host each time.
//   - Environment variables read in init() are build-time values. Read
//     configuration with os.Getenv inside the handler: the environment is
//     refreshed at the start of every request with the function's configured
//     variables plus request metadata.
//   - Goroutines started in init() that are parked (blocked) when the
//     snapshot is taken resume normally in every restored instance.
//     Goroutines started while serving a request stop running when the
//     request returns: finish background work before the handler returns.
//   - Stdout carries the HTTP response. Log to stderr (the log package does
//     by default); never print to stdout.
//   - Responses are buffered: http.Flusher is accepted but does nothing, and
//     informational (1xx) status codes are dropped.
package thaw
