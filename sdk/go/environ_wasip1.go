//go:build wasip1

package thaw

import (
	"os"
	"sync"
	_ "unsafe" // for go:linkname
)

// The environment lives in package syscall: envs holds "KEY=VALUE"
// entries, and env maps each key to its entry. os.Setenv per variable
// builds both one entry at a time (a string concatenation, a slice growth
// and a map insert each), which measured 6% of a hello request's CPU, so
// installEnviron sets them whole. It reaches them with //go:linkname, which
// thaw's build allows with -ldflags=-checklinkname=0; the three variables
// have had these names and types in syscall/env_unix.go since long before
// Go 1.24, and a release without them fails to link rather than misbehave.

//go:linkname syscallEnvLock syscall.envLock
var syscallEnvLock sync.RWMutex

//go:linkname syscallEnvs syscall.envs
var syscallEnvs []string

//go:linkname syscallEnv syscall.env
var syscallEnv map[string]int

// installEnviron makes kept, indexed by key in index, the process
// environment. The runtime reads one variable itself, GODEBUG, and hears
// of it only through os.Setenv and os.Unsetenv, so GODEBUG goes that way.
func installEnviron(kept []string, index map[string]int) {
	_, hadGodebug := os.LookupEnv("GODEBUG")
	syscallEnvLock.Lock()
	syscallEnvs, syscallEnv = kept, index
	syscallEnvLock.Unlock()
	if i, ok := index["GODEBUG"]; ok {
		os.Setenv("GODEBUG", kept[i][len("GODEBUG="):])
	} else if hadGodebug {
		os.Unsetenv("GODEBUG")
	}
}
