module github.com/certnode/certnode

go 1.26

require (
	github.com/ThalesGroup/crypto11 v1.6.2
	github.com/go-json-experiment/json v1.27.2
	github.com/miekg/pkcs11 v1.1.2
)

require (
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	github.com/spf13/cobra v1.10.2 // indirect
	github.com/spf13/pflag v1.0.9 // indirect
	github.com/thales-e-security/pool v0.0.2 // indirect
)
