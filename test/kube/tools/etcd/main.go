// Command etcd is etcd's own server, built from its Go module for the
// Kubernetes control plane the tests start (test/kube/tools/README.md).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
