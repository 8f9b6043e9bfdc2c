package thaw

import (
	"fmt"
	"os"
)

// Main serves the registered handler when the function runs as a program
// rather than as a snapshotted thaw reactor. Call it from main:
//
//	func main() { thaw.Main() }
//
// As a thaw reactor (the default build, -buildmode=c-shared) main never
// runs, so Main costs nothing there. Built as a wasip1 command
// (-buildmode=default), Main serves one CGI request, which is how thaw's
// runner runs command modules. Built natively, Main serves one CGI request
// when GATEWAY_INTERFACE is set, and otherwise listens on $THAW_LISTEN
// (default 127.0.0.1:8080) with net/http. The handler and its init() are
// the same in every mode, which is what makes them comparable.
func Main() {
	h := registeredHandler()
	if h == nil {
		fmt.Fprintln(os.Stderr, "thaw: no handler registered; call thaw.HandleFunc or thaw.Serve from init()")
		os.Exit(1)
	}
	if err := runMain(h); err != nil {
		fmt.Fprintln(os.Stderr, "thaw:", err)
		os.Exit(1)
	}
}

// listenAddress is where a native program serves over HTTP.
func listenAddress() string {
	if addr := os.Getenv("THAW_LISTEN"); addr != "" {
		return addr
	}
	return "127.0.0.1:8080"
}
