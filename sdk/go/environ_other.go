//go:build !wasip1

package thaw

import (
	"os"
	"strings"
)

// installEnviron makes kept, indexed by key in index, the process
// environment. Outside wasip1 (the SDK's native tests) it takes the public
// way, one variable at a time.
func installEnviron(kept []string, index map[string]int) {
	os.Clearenv()
	for _, kv := range kept {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
}
