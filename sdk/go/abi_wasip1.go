package thaw

import (
	"fmt"
	"os"
	"runtime"
	"unsafe"
)

// This file holds the module's ABI with the thaw host. It is only compiled
// for GOOS=wasip1 (by its file name); everything it calls is plain Go that
// the host-side tests exercise.

//go:wasmimport wasi_snapshot_preview1 environ_sizes_get
func environSizesGet(count, bufLen unsafe.Pointer) uint32

//go:wasmimport wasi_snapshot_preview1 environ_get
func environGet(environ, buf unsafe.Pointer) uint32

// thawHandle serves exactly one request: stdin holds the request, stdout
// receives the response.
//
//go:wasmexport thaw_handle
func thawHandle() {
	reseedRuntime()
	if err := refreshEnviron(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	if err := serveOnce(os.Stdin, os.Stdout, registeredHandler()); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
}

// thawHandleCompact serves exactly one request in the compact ABI: stdin
// holds a request frame, which also carries the environment, and stdout
// receives a response frame.
//
//go:wasmexport thaw_handle_compact
func thawHandleCompact() {
	reseedRuntime()
	if err := serveFrame(os.Stdin, os.Stdout, registeredHandler()); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
}

// thawPreSnapshot is called once by the snapshotter after _initialize, just
// before memory is captured.
//
//go:wasmexport thaw_pre_snapshot
func thawPreSnapshot() {
	if err := checkRuntimeLayout(); err != nil {
		panic(err)
	}
	preSnapshot()
	// The build's environment is no instance's: each gets the host's, in
	// refreshEnviron, which is cheaper when it starts from none.
	os.Clearenv()
}

// refreshEnviron replaces the environment that the Go runtime captured at
// initialization (build time, for a snapshot) with the one the host gives
// this instance now.
func refreshEnviron() error {
	var count, size uint32
	if errno := environSizesGet(unsafe.Pointer(&count), unsafe.Pointer(&size)); errno != 0 {
		return fmt.Errorf("thaw: environ_sizes_get failed: errno %d", errno)
	}
	// Keep both buffers non-empty so that their first elements exist.
	ptrs := make([]uint32, count+1) // wasm32 pointers, one per variable
	buf := make([]byte, size+1)
	if errno := environGet(unsafe.Pointer(&ptrs[0]), unsafe.Pointer(&buf[0])); errno != 0 {
		return fmt.Errorf("thaw: environ_get failed: errno %d", errno)
	}
	runtime.KeepAlive(ptrs)
	return replaceEnviron(parseEnviron(buf[:size], int(count)))
}
