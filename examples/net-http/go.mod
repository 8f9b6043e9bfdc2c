module thaw.dev/examples/net-http

go 1.24
