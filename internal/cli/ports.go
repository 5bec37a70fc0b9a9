package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
)

func (a *app) vmPortCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "port",
		Short: "Publish a VM's guest ports on the host",
		Long: `Publish ports of a VM: while it runs, the daemon listens on the host and
relays each connection to the port on the guest's loopback over its SSH
connection, so services bound to the guest's 127.0.0.1 are reachable.
A forward is kept until it is removed or the VM deleted: stopping the VM
closes its listener, starting it opens it again, and a daemon restart
re-opens it. Added to a stopped VM, a forward is recorded (its host port
checked free, and picked now for 0) and listened on at the VM's start.`,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "add VM [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp]",
		Short: "Publish a guest port (HOSTPORT 0 picks a free one; HOSTADDR defaults to 127.0.0.1)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.Forward, error) {
				return c.AddPort(ctx, args[0], api.AddPortRequest{Spec: args[1]})
			}, writeForward)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "rm VM [HOSTADDR:]HOSTPORT",
		Short: "Unpublish a port",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			if err := c.RemovePort(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, args[1])
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "list VM",
		Short: "List a VM's published ports",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return showList(a, cmd, func(c *api.Client, ctx context.Context) ([]model.Forward, error) {
				return c.ListPorts(ctx, args[0])
			}, writeForwards)
		},
	})
	return cmd
}

// forwardText is one forward as "HOSTADDR:HOSTPORT -> GUESTPORT/tcp".
func forwardText(f model.Forward) string {
	return net.JoinHostPort(f.HostAddr, strconv.Itoa(f.HostPort)) + " -> " + strconv.Itoa(f.GuestPort) + "/" + f.Proto
}

func writeForward(w io.Writer, f model.Forward) error {
	_, err := fmt.Fprintln(w, forwardText(f))
	return err
}

func writeForwards(w io.Writer, fs []model.Forward) error {
	rows := make([][]string, 0, len(fs))
	for _, f := range fs {
		rows = append(rows, []string{net.JoinHostPort(f.HostAddr, strconv.Itoa(f.HostPort)), strconv.Itoa(f.GuestPort), f.Proto, stateText(f)})
	}
	return table(w, []string{"HOST", "GUEST PORT", "PROTO", "STATE"}, rows)
}

// stateText is a forward's live state, with why it failed.
func stateText(f model.Forward) string {
	if f.State == model.ForwardFailed && f.Error != "" {
		return f.State + ": " + f.Error
	}
	return orDash(f.State)
}

// portsText is a VM's forwards on one line, for `vm show`.
func portsText(fs []model.Forward) string {
	parts := make([]string, 0, len(fs))
	for _, f := range fs {
		s := forwardText(f)
		if f.State != "" {
			s += " (" + stateText(f) + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}
