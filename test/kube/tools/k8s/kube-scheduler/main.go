// Command kube-scheduler is Kubernetes' scheduler at the same version as
// the API server the tests start (scripts/kube-bins.sh).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() { os.Exit(cli.Run(app.NewSchedulerCommand())) }
