// Command kubectl is Kubernetes' CLI at the same version as the API
// server the tests start (test/kube/tools/README.md).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
)

func main() { os.Exit(cli.Run(cmd.NewDefaultKubectlCommand())) }
