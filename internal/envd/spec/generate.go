// Package spec holds envd's wire contract: the process and filesystem
// .proto files of E2B's envd (packages/envd/spec in e2b-dev/infra, Apache
// 2.0, copied unchanged) and the Go code generated from them (message
// types and Connect handlers/clients). Nothing here is written by hand;
// `go generate ./internal/envd/spec` regenerates it (needs protoc on PATH;
// the Go plugins are installed at pinned versions by gen.sh).
package spec

//go:generate sh gen.sh
