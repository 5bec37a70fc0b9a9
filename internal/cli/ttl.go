package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
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

// ttlFlags are the deadline, idle timeout, publish and label flags of
// create and run.
func ttlFlags(cmd *cobra.Command, req *api.CreateVMRequest) {
	deadlineFlags(cmd, &req.TTL, &req.TTLAction, &req.IdleTimeout, &req.Labels)
	cmd.Flags().StringArrayVarP(&req.Publish, "publish", "p", nil, "publish a guest port on the host: [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp], HOSTPORT 0 picks a free one, HOSTADDR defaults to 127.0.0.1 (repeatable)")
}

// deadlineFlags are the deadline, idle timeout and label flags of
// create, run and fork.
func deadlineFlags(cmd *cobra.Command, ttl, action, idle *string, labels *map[string]string) {
	f := cmd.Flags()
	f.StringVar(ttl, "ttl", "", "delete (or --ttl-action stop|pause) the VM this long after creating it, e.g. 90s, 10m, 2h, 7d (at most 30d)")
	f.StringVar(action, "ttl-action", "", "what the daemon does when --ttl or --idle-timeout passes: delete (default), stop or pause")
	f.StringVar(idle, "idle-timeout", "", "delete (or --ttl-action stop|pause) the running VM once idle this long: no exec, session I/O, file operation or forwarded connection, e.g. 5m")
	f.Var(&labelsValue{m: labels}, "label", "label the VM KEY=VALUE (repeatable; KEY is [PREFIX/]NAME as in Kubernetes)")
}

func (a *app) vmTTLCommand() *cobra.Command {
	var action, idle string
	cmd := &cobra.Command{
		Use:   "ttl VM [DURATION|none] [--idle DURATION|none]",
		Short: "Set, extend or clear a VM's deadline or idle timeout (deleted, stopped or paused when it passes)",
		Long: `Set the VM's deadline to DURATION from now (e.g. 90s, 10m, 2h, 7d; at most
30d), replacing any earlier one, or clear it with none. When the deadline
passes the daemon deletes the VM, or stops it with --ttl-action stop, or
pauses it with --ttl-action pause (docs/pause.md); a
deadline that passed while the daemon was down is enforced when it starts.

--idle sets (or clears, none) the idle timeout: the running VM is deleted
(or stopped or paused, --ttl-action) once it has had no exec, session I/O, file
operation or forwarded connection for that long. Idle time is counted
from the last activity, the VM's boot or the daemon's start, whichever is
latest. Either or both may be given.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.VMTTLRequest{Action: action, Idle: idle}
			if len(args) == 2 {
				req.TTL = args[1]
			} else if idle == "" {
				return errdefs.Errorf(errdefs.CodeInvalid, "give a DURATION, none, or --idle")
			}
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.VM, error) {
				return c.SetVMTTL(ctx, args[0], req)
			}, writeTTL)
		},
	}
	cmd.Flags().StringVar(&action, "ttl-action", "", "delete, stop or pause (default: the VM's current action, else delete)")
	cmd.Flags().StringVar(&idle, "idle", "", "idle timeout, e.g. 5m, or none to clear it")
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

// labelsValue is the repeatable --label KEY=VALUE flag, checked as it is
// read.
type labelsValue struct{ m *map[string]string }

func (l *labelsValue) String() string {
	if l.m == nil {
		return ""
	}
	return model.FormatLabels(*l.m)
}

func (l *labelsValue) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("%q: want KEY=VALUE", s)
	}
	if err := model.ValidateLabel(k, v); err != nil {
		return err
	}
	if *l.m == nil {
		*l.m = map[string]string{}
	}
	if _, dup := (*l.m)[k]; dup {
		return fmt.Errorf("label %s given twice", k)
	}
	(*l.m)[k] = v
	return nil
}

func (l *labelsValue) Type() string { return "KEY=VALUE" }
