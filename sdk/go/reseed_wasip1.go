//go:build wasip1 && !go1.28

package thaw

import (
	"errors"
	"unsafe"
)

// The Go runtime seeds its random state once, at startup, and in a thaw
// function startup happened at build time: without a reseed every instance
// restored from one snapshot would draw the same math/rand values, the same
// hash/maphash seeds and the same map seeds and iteration order, and anyone
// holding the artifact could read them. reseedRuntime repeats the runtime's
// own seeding at the start of every request.
//
// It reaches into runtime internals with //go:linkname, which thaw's build
// allows with -ldflags=-checklinkname=0. The layout mirrored here was read
// from the runtime sources of Go 1.24, 1.25, 1.26 and 1.27 (src/runtime/rand.go,
// src/internal/chacha8rand/chacha8.go, unchanged across them); the build
// constraint above and the toolchain check in thaw's builder refuse any
// other release rather than ship frozen seeds. checkRuntimeLayout verifies
// the mirror against the live runtime at build time.

// globalRand mirrors the runtime's globalRand: its generator for new Ms,
// seeded by randinit.
//
//go:linkname globalRand runtime.globalRand
var globalRand struct {
	lock  uintptr // runtime.mutex, without lock ranking
	seed  [32]byte
	state chacha8State
	init  bool
}

// chacha8State mirrors internal/chacha8rand.State.
type chacha8State struct {
	buf  [32]uint64
	seed [4]uint64
	i    uint32
	n    uint32
	c    uint32
}

// m0 is the runtime's first (on wasm, only) M, whose per-M state backs
// rand(): math/rand, math/rand/v2, hash/maphash, map seeds and iteration
// order, select order.
//
//go:linkname m0 runtime.m0
var m0 byte

// randinit seeds globalRand from WASI random_get.
//
//go:linkname randinit runtime.randinit
func randinit()

// mrandinit reseeds an M's generators from globalRand.
//
//go:linkname mrandinit runtime.mrandinit
func mrandinit(mp unsafe.Pointer)

// reseedRuntime gives this instance fresh runtime randomness. Maps built
// before the snapshot keep their own seeds and keep working.
func reseedRuntime() {
	globalRand.init = false
	randinit()
	mrandinit(unsafe.Pointer(&m0))
}

// checkRuntimeLayout fails when the runtime's state does not look like the
// mirror above after the runtime seeded it: an unlocked lock, a seed
// cleared after use, and the initialized flag set.
func checkRuntimeLayout() error {
	ok := globalRand.lock == 0 && globalRand.init && globalRand.seed == [32]byte{} &&
		globalRand.state.seed != [4]uint64{} && globalRand.state.i <= globalRand.state.n &&
		globalRand.state.n <= uint32(len(globalRand.state.buf))
	if !ok {
		return errors.New("thaw: the Go runtime's random state is not laid out as this SDK expects, so instances could not be given fresh randomness; build with a Go release this SDK supports (1.24 to 1.27)")
	}
	return nil
}
