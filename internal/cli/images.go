package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
)

func (a *app) imageCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Build, import, list and remove root filesystem images"}

	var req api.BuildImageRequest
	var scripts, copies []string
	build := &cobra.Command{
		Use:   "build",
		Short: "Build an image from distribution packages",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r := req
			for _, path := range scripts {
				b, err := os.ReadFile(path)
				if err != nil {
					return fmt.Errorf("--script: %w", err)
				}
				r.Scripts = append(r.Scripts, api.NamedBlob{Name: filepath.Base(path), Content: b})
			}
			for _, c := range copies {
				cs, err := parseCopy(c)
				if err != nil {
					return err
				}
				r.Copies = append(r.Copies, cs)
			}
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.Image, error) {
				return c.BuildImage(ctx, r, progressPrinter(a.stderr))
			}, writeImage)
		},
	}
	f := build.Flags()
	f.StringVar(&req.Name, "name", "", "image name (default: derived by the daemon)")
	f.StringVar(&req.Distro, "distro", "", "distribution (debian)")
	f.StringVar(&req.Suite, "suite", "", "distribution suite, e.g. bookworm")
	f.StringArrayVar(&req.Packages, "package", nil, "extra package to install (repeatable)")
	f.StringVar(&req.Size, "size", "", "image size, e.g. 2G")
	f.StringVar(&req.Init, "init", "", "init in the guest: fast or systemd")
	f.StringArrayVar(&scripts, "script", nil, "shell script run in the new root (repeatable)")
	f.StringArrayVar(&copies, "copy", nil, "host file put into the image, SRC:DST (repeatable)")
	f.BoolVar(&req.NoCache, "no-cache", false, "rebuild even when an image of the same recipe exists")
	cmd.AddCommand(build)

	var importName string
	imp := &cobra.Command{
		Use:   "import FILE",
		Short: "Register an existing ext4 file as an image",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.Image, error) {
				return c.ImportImage(ctx, api.ImportImageRequest{Path: path, Name: importName}, progressPrinter(a.stderr))
			}, writeImage)
		},
	}
	imp.Flags().StringVar(&importName, "name", "", "image name (default: from the file name)")
	cmd.AddCommand(imp)

	cmd.AddCommand(&cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List images",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return showList(a, cmd, (*api.Client).ListImages, imageTable)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "show IMAGE",
		Short: "Show an image",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.Image, error) {
				return c.GetImage(ctx, args[0])
			}, writeImage)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:     "rm IMAGE...",
		Aliases: []string{"remove"},
		Short:   "Remove images (refused while a VM uses one) and their warm-start templates",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.removeEach(cmd, args, (*api.Client).RemoveImage)
		},
	})
	cmd.AddCommand(a.imageWarmCommand(), a.imageUnwarmCommand())
	return cmd
}

// parseCopy parses SRC:DST of --copy; DST must be absolute.
func parseCopy(s string) (api.CopySpec, error) {
	src, dst, ok := strings.Cut(s, ":")
	if !ok || src == "" || !strings.HasPrefix(dst, "/") {
		return api.CopySpec{}, fmt.Errorf("invalid --copy %q: use SRC:DST with an absolute DST inside the image", s)
	}
	abs, err := filepath.Abs(src)
	if err != nil {
		return api.CopySpec{}, err
	}
	return api.CopySpec{Src: abs, Dst: dst}, nil
}

func (a *app) kernelCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "kernel", Short: "Pull, import, list and remove guest kernels"}
	cmd.AddCommand(&cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List catalog and installed kernels",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return showList(a, cmd, (*api.Client).ListKernels, kernelTable)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "show KERNEL",
		Short: "Show an installed kernel",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.Kernel, error) {
				return c.GetKernel(ctx, args[0])
			}, writeKernel)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "pull NAME",
		Short: "Install a kernel from the catalog",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.Kernel, error) {
				return c.PullKernel(ctx, args[0], progressPrinter(a.stderr))
			}, writeKernel)
		},
	})
	var ireq api.ImportKernelRequest
	imp := &cobra.Command{
		Use:   "import --vmlinux FILE [--initrd FILE] [--name NAME]",
		Short: "Register your own kernel files",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r := ireq
			for _, p := range []*string{&r.Vmlinux, &r.BzImage, &r.Initrd} {
				if *p != "" {
					abs, err := filepath.Abs(*p)
					if err != nil {
						return err
					}
					*p = abs
				}
			}
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.Kernel, error) {
				return c.ImportKernel(ctx, r)
			}, writeKernel)
		},
	}
	f := imp.Flags()
	f.StringVar(&ireq.Vmlinux, "vmlinux", "", "uncompressed ELF kernel (required)")
	f.StringVar(&ireq.BzImage, "bzimage", "", "compressed kernel image (QEMU)")
	f.StringVar(&ireq.Initrd, "initrd", "", "initial ramdisk")
	f.StringVar(&ireq.Name, "name", "", "kernel name")
	f.StringVar(&ireq.Cmdline, "cmdline", "", "default kernel command line")
	_ = imp.MarkFlagRequired("vmlinux")
	cmd.AddCommand(imp)
	cmd.AddCommand(&cobra.Command{
		Use:     "rm KERNEL...",
		Aliases: []string{"remove"},
		Short:   "Remove installed kernels (refused while a VM uses one)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.removeEach(cmd, args, (*api.Client).RemoveKernel)
		},
	})
	return cmd
}
