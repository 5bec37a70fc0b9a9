package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
)

// vmSnapshotCommand is `banger vm snapshot`: point-in-time copies of
// running or paused VMs (docs/snapshots.md).
func (a *app) vmSnapshotCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot", Short: "Take, list and remove snapshots of running or paused VMs (memory and disks)"}
	var name string
	create := &cobra.Command{
		Use: "create VM", Short: "Save a VM's memory and disks as a snapshot (a running one is frozen for a moment, a paused one stays paused)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.Snapshot, error) {
				return c.CreateSnapshot(ctx, args[0], api.CreateSnapshotRequest{Name: name})
			}, writeSnapshot)
		},
	}
	create.Flags().StringVar(&name, "name", "", "snapshot name (default: VM-yyyymmdd-hhmmss)")
	cmd.AddCommand(create)
	cmd.AddCommand(&cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List snapshots", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return showList(a, cmd, (*api.Client).ListSnapshots, func(w io.Writer, ss []model.Snapshot) error {
				return table(w, snapshotHeader, snapshotRows(ss, time.Now()))
			})
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use: "show SNAPSHOT", Short: "Show a snapshot", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.Snapshot, error) {
				return c.GetSnapshot(ctx, args[0])
			}, writeSnapshot)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use: "rm SNAPSHOT...", Aliases: []string{"delete"}, Short: "Remove snapshots no VM was made from", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.removeEach(cmd, args, func(c *api.Client, ctx context.Context, ref string) error {
				return c.RemoveSnapshot(ctx, ref)
			})
		},
	})
	return cmd
}

// vmForkCommand is `banger vm fork`.
func (a *app) vmForkCommand() *cobra.Command {
	var req api.ForkRequest
	cmd := &cobra.Command{
		Use: "fork VM|SNAPSHOT", Short: "Make VMs that resume from a snapshot (of a running or paused VM: one is taken first)",
		Long: `Make VMs that resume from a snapshot, or from a snapshot taken first of a
running or paused VM (kept). Each has its own name, address, MAC, host
key and machine id, and copy-on-write disks over the snapshot's. The
--label, --ttl, --ttl-action and --idle-timeout flags apply to each; the
network flags, when given, replace the snapshot's policy (else each
fork has the policy of the VM the snapshot was taken of).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Source = args[0]
			return showList(a, cmd, func(c *api.Client, ctx context.Context) ([]model.VM, error) {
				return c.Fork(ctx, req, progressPrinter(a.stderr))
			}, func(w io.Writer, vms []model.VM) error {
				rows := make([][]string, 0, len(vms))
				for _, v := range vms {
					rows = append(rows, []string{v.Name, string(v.State), orDash(v.GuestIP), v.GuestMAC})
				}
				return table(w, []string{"NAME", "STATE", "IP", "MAC"}, rows)
			})
		},
	}
	cmd.Flags().IntVarP(&req.Count, "count", "n", 1, "how many VMs to make")
	cmd.Flags().StringVar(&req.NamePrefix, "name-prefix", "", "their names' prefix: PREFIX-1, PREFIX-2, … (default: VM-fork)")
	deadlineFlags(cmd, &req.TTL, &req.TTLAction, &req.IdleTimeout, &req.Labels)
	netFlags(cmd, &req.Net, &req.Allow, &req.Deny, &req.AllowVMs)
	return cmd
}

var snapshotHeader = []string{"ID", "NAME", "VM", "STATE", "MEMORY", "SIZE", "USED BY", "CREATED"}

func snapshotRows(ss []model.Snapshot, now time.Time) [][]string {
	rows := make([][]string, 0, len(ss))
	for _, s := range ss {
		rows = append(rows, []string{model.ShortID(s.ID), s.Name, s.VMName, string(s.State), size(int64(s.MemoryMiB) << 20),
			size(s.SizeBytes), orDash(strings.Join(s.UsedBy, ",")), ago(s.CreatedAt, now)})
	}
	return rows
}

func writeSnapshot(w io.Writer, s model.Snapshot) error {
	created := ""
	if !s.CreatedAt.IsZero() {
		created = s.CreatedAt.Local().Format(time.RFC3339)
	}
	return kv(w, "id", s.ID, "name", s.Name, "state", string(s.State), "vm", s.VMName, "vm id", s.VMID,
		"image", s.ImageID, "kernel", s.KernelID, "vmm", s.VMM, "cpus", fmt.Sprint(s.CPUs), "memory", size(int64(s.MemoryMiB)<<20),
		"disk", size(s.DiskBytes), "storage", s.CowStrategy, "ip", s.GuestIP, "mac", s.GuestMAC,
		"network", snapshotNet(s.Net), "base", orDash(s.Base), "dir", s.Dir, "size", size(s.SizeBytes), "used by", strings.Join(s.UsedBy, ", "), "created", created)
}

// snapshotNet is the policy VMs made from a snapshot start with; a
// snapshot made before snapshots kept one has none (the default).
func snapshotNet(p model.NetPolicy) string {
	if p.Mode == "" {
		p.Mode = model.NetInternet
	}
	return p.String()
}
