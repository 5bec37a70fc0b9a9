package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
)

// imageWarmCommand is `banger image warm`: warm-start templates
// (docs/snapshots.md, "Warm start").
func (a *app) imageWarmCommand() *cobra.Command {
	var req api.WarmRequest
	var list bool
	cmd := &cobra.Command{
		Use:   "warm [IMAGE] | warm --list",
		Short: "Make the warm-start template of a VM shape: vm create and vm run restore from it instead of booting",
		Long: "Boot a VM of this shape (IMAGE, default the default image, and --kernel, --cpus,\n" +
			"--memory, --disk, --vmm as vm create takes them), snapshot it once its guest answers\n" +
			"and delete it: `vm create --start` and `vm run` of the same shape then restore from\n" +
			"the template, each VM told its own identity, instead of booting (--cold boots).\n" +
			"A template whose image, kernel or banger's guest side changed is stale, never used,\n" +
			"and removed by the next `image warm` once no VM uses it; `image rm` removes an\n" +
			"image's templates. With --list, list the templates.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if list {
				if len(args) > 0 {
					return errors.New("--list takes no image")
				}
				for _, f := range []string{"kernel", "cpus", "memory", "disk", "vmm"} {
					if cmd.Flags().Changed(f) {
						return fmt.Errorf("--list does not go with --%s", f)
					}
				}
				return showList(a, cmd, (*api.Client).ListTemplates, func(w io.Writer, ts []model.Snapshot) error {
					return table(w, templateHeader, templateRows(ts, time.Now()))
				})
			}
			r := req
			if len(args) == 1 {
				r.Image = args[0]
			}
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.Snapshot, error) {
				return c.WarmImage(ctx, r, progressPrinter(a.stderr))
			}, writeTemplate)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&list, "list", false, "list the warm-start templates")
	f.StringVar(&req.Kernel, "kernel", "", "kernel name or id (default: the default kernel)")
	f.IntVar(&req.CPUs, "cpus", 0, "vCPUs")
	f.StringVar(&req.Memory, "memory", "", "memory, e.g. 1G")
	f.StringVar(&req.Disk, "disk", "", "work disk size, e.g. 4G")
	f.StringVar(&req.VMM, "vmm", "", "VMM: auto, firecracker or qemu")
	return cmd
}

// imageUnwarmCommand is `banger image unwarm`.
func (a *app) imageUnwarmCommand() *cobra.Command {
	return &cobra.Command{
		Use: "unwarm TEMPLATE...", Short: "Remove warm-start templates no VM was made from", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.removeEach(cmd, args, func(c *api.Client, ctx context.Context, ref string) error {
				return c.RemoveTemplate(ctx, ref)
			})
		},
	}
}

var templateHeader = []string{"NAME", "IMAGE", "CPUS", "MEMORY", "DISK", "VMM", "STATE", "SIZE", "USED BY", "CREATED"}

func templateRows(ts []model.Snapshot, now time.Time) [][]string {
	rows := make([][]string, 0, len(ts))
	for _, t := range ts {
		state := string(t.State)
		if t.Stale != "" {
			state = "stale"
		}
		rows = append(rows, []string{t.Name, orDash(t.ImageName), fmt.Sprint(t.CPUs), size(int64(t.MemoryMiB) << 20), size(t.DiskBytes),
			t.VMM, state, size(t.SizeBytes), orDash(strings.Join(t.UsedBy, ",")), ago(t.CreatedAt, now)})
	}
	return rows
}

func writeTemplate(w io.Writer, t model.Snapshot) error {
	created := ""
	if !t.CreatedAt.IsZero() {
		created = t.CreatedAt.Local().Format(time.RFC3339)
	}
	return kv(w, "name", t.Name, "state", string(t.State), "image", t.ImageID, "kernel", t.KernelID, "vmm", t.VMM,
		"cpus", fmt.Sprint(t.CPUs), "memory", size(int64(t.MemoryMiB)<<20), "disk", size(t.DiskBytes), "storage", t.CowStrategy,
		"dir", t.Dir, "size", size(t.SizeBytes), "used by", strings.Join(t.UsedBy, ", "), "created", created)
}
