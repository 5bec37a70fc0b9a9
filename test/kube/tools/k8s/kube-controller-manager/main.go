// Command kube-controller-manager is Kubernetes' controller manager at
// the same version as the API server the tests start
// (scripts/kube-bins.sh); the tests run its node lifecycle controller.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() { os.Exit(cli.Run(app.NewControllerManagerCommand())) }
