module thaw.dev/examples/fetch

go 1.24

require thaw.dev/thaw v0.0.0

replace thaw.dev/thaw => ../../sdk/go
