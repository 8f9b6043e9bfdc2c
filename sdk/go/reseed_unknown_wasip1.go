//go:build wasip1 && go1.28

package thaw

// This SDK gives every instance fresh runtime randomness by reaching into
// runtime internals it has checked for Go 1.24 to 1.27 only (see
// reseed_wasip1.go). On a newer Go it refuses to compile rather than ship
// functions whose math/rand, maphash and map seeds are frozen in the
// snapshot; the compiler prints the message below.
var _ int = "thaw: this SDK does not know this Go release's runtime; build with Go 1.24 to 1.27 or update thaw"
