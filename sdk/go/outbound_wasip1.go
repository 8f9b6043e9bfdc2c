package thaw

import (
	"net/http"
	"runtime"
	"unsafe"
)

//go:wasmimport thaw_http send
func hostSend(request unsafe.Pointer, requestLen uint32, result unsafe.Pointer) uint32

//go:wasmimport thaw_http take
func hostTake(handle uint32, buf unsafe.Pointer, bufLen uint32) uint32

func init() {
	http.DefaultTransport = hostTransport{send: sendThroughHost}
}

// sendThroughHost makes the two host calls of one outbound request: send
// (which waits for the answer) and take (which copies it here).
func sendThroughHost(request []byte) (uint32, []byte) {
	var result [2]uint32         // handle, length
	request = append(request, 0) // a first element to point at, even when empty
	outcome := hostSend(unsafe.Pointer(&request[0]), uint32(len(request)-1), unsafe.Pointer(&result[0]))
	runtime.KeepAlive(request)
	buf := make([]byte, result[1]+1)
	n := hostTake(result[0], unsafe.Pointer(&buf[0]), uint32(len(buf)))
	if n > result[1] {
		return outcomeFailed, []byte("the host lost the outbound result")
	}
	return outcome, buf[:n]
}
