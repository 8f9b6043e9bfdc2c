module thaw.dev/thaw

go 1.24
