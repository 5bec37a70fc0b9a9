#!/bin/sh
# Regenerates the Go code of envd's .proto files. Needs protoc on PATH
# (Debian: protobuf-compiler); the plugins are pinned to the versions in
# go.mod and installed into a temporary directory.
set -eu
cd "$(dirname "$0")"
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
GOBIN=$bin go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
GOBIN=$bin go install connectrpc.com/connect/cmd/protoc-gen-connect-go@v1.21.1
mod=github.com/banger/banger/internal/envd/spec
PATH=$bin:$PATH protoc -I . \
	--go_out=. --go_opt=paths=source_relative \
	--go_opt=Mprocess/process.proto=$mod/process \
	--go_opt=Mfilesystem/filesystem.proto=$mod/filesystem \
	--connect-go_out=. --connect-go_opt=paths=source_relative \
	--connect-go_opt=Mprocess/process.proto=$mod/process \
	--connect-go_opt=Mfilesystem/filesystem.proto=$mod/filesystem \
	process/process.proto filesystem/filesystem.proto
