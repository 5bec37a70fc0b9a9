package cli

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
)

// The lease of `vm run --rm`: the VM is created with a deadline of
// runLease, which the CLI pushes back every runRenew while it runs. The
// daemon owns the deletion: a CLI killed outright (SIGKILL, a lost
// terminal) stops renewing, and its VM is deleted within runLease.
const (
	runLease = 30 * time.Second
	runRenew = 10 * time.Second
)

// ttlFlags are the deadline flags of create and run.
func ttlFlags(cmd *cobra.Command, req *api.CreateVMRequest) {
	f := cmd.Flags()
	f.StringVar(&req.TTL, "ttl", "", "delete (or --ttl-action stop) the VM this long after creating it, e.g. 90s, 10m, 2h, 7d (at most 30d)")
	f.StringVar(&req.TTLAction, "ttl-action", "", "what the daemon does when --ttl passes: delete (default) or stop")
}

func (a *app) vmTTLCommand() *cobra.Command {
	var action string
	cmd := &cobra.Command{
		Use:   "ttl VM DURATION|none",
		Short: "Set, extend or clear a VM's deadline (deleted, or stopped, when it passes)",
		Long: `Set the VM's deadline to DURATION from now (e.g. 90s, 10m, 2h, 7d; at most
30d), replacing any earlier one, or clear it with none. When the deadline
passes the daemon deletes the VM, or stops it with --ttl-action stop; a
deadline that passed while the daemon was down is enforced when it starts.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.VM, error) {
				return c.SetVMTTL(ctx, args[0], api.VMTTLRequest{TTL: args[1], Action: action})
			}, writeTTL)
		},
	}
	cmd.Flags().StringVar(&action, "ttl-action", "", "delete or stop (default: the VM's current action, else delete)")
	return cmd
}

// renewLease keeps pushing back the deadline of the `vm run --rm` VM
// named name until ctx ends. Failures are ignored: before the create
// records the VM there is nothing to renew, and a renewal that never
// lands is what lets the daemon delete the VM of a CLI that is gone.
func renewLease(ctx context.Context, c *api.Client, name string) {
	t := time.NewTicker(runRenew)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_, _ = c.SetVMTTL(ctx, name, api.VMTTLRequest{TTL: runLease.String(), Action: model.TTLDelete})
	}
}
