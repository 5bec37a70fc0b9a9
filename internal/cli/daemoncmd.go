package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/tail"
)

func (a *app) daemonCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "daemon", Short: "Start, stop and inspect bangerd"}
	cmd.AddCommand(&cobra.Command{
		Use:   "start",
		Short: "Start bangerd if it is not running",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			return a.printInfo(cmd, c)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Show whether bangerd runs, and where",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.connected(cmd.Context())
			if errors.Is(err, api.ErrDaemonUnreachable) {
				if a.json {
					a.printJSON(map[string]any{"running": false, "socket": a.resolvedSocket()})
				} else {
					fmt.Fprintf(a.stdout, "bangerd is not running (socket %s)\n", a.resolvedSocket())
				}
				return exitCode(3)
			}
			if err != nil {
				return err
			}
			return a.printInfo(cmd, c)
		},
	})
	var timeout time.Duration
	stop := &cobra.Command{
		Use:   "stop",
		Short: "Stop bangerd (VMs keep running)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.connected(cmd.Context())
			if errors.Is(err, api.ErrDaemonUnreachable) {
				fmt.Fprintln(a.stderr, "bangerd is not running")
				return nil
			}
			if err != nil {
				return err
			}
			info, err := c.Info(cmd.Context())
			if err != nil {
				return err
			}
			if err := syscall.Kill(info.PID, syscall.SIGTERM); err != nil {
				return fmt.Errorf("signal bangerd (pid %d): %w", info.PID, err)
			}
			deadline := time.Now().Add(timeout)
			for time.Now().Before(deadline) {
				// Gone when the pid is and the socket no longer answers.
				if syscall.Kill(info.PID, 0) != nil {
					fmt.Fprintf(a.stderr, "bangerd (pid %d) stopped\n", info.PID)
					return nil
				}
				time.Sleep(100 * time.Millisecond)
			}
			return fmt.Errorf("bangerd (pid %d) still runs %s after SIGTERM: requests may still be finishing; see %s", info.PID, timeout, info.LogPath)
		},
	}
	stop.Flags().DurationVar(&timeout, "timeout", 40*time.Second, "how long to wait for bangerd to exit")
	cmd.AddCommand(stop)

	var nLines int
	var follow bool
	logs := &cobra.Command{
		Use:   "logs",
		Short: "Print bangerd's log",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := a.logPath()
			if nLines > 0 {
				// Read whole: --tail promises n lines however long they are.
				b, err := os.ReadFile(path)
				if err != nil {
					return fmt.Errorf("daemon log: %w", err)
				}
				fmt.Fprintln(a.stdout, string(tail.Lines(bytes.TrimRight(b, "\n"), nLines)))
			} else {
				f, err := os.Open(path)
				if err != nil {
					return fmt.Errorf("daemon log: %w", err)
				}
				_, err = io.Copy(a.stdout, f)
				f.Close()
				if err != nil {
					return err
				}
			}
			if !follow {
				return nil
			}
			return followFile(cmd, path, a.stdout)
		},
	}
	logs.Flags().IntVar(&nLines, "tail", 0, "print only the last N lines")
	logs.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines")
	cmd.AddCommand(logs)
	cmd.AddCommand(a.daemonInstallCommand(), a.daemonUninstallCommand())
	return cmd
}

func (a *app) printInfo(cmd *cobra.Command, c *api.Client) error {
	info, err := c.Info(cmd.Context())
	if err != nil {
		return err
	}
	return emit(a, info, writeInfo)
}

// followFile prints what is appended to path until the command ends.
func followFile(cmd *cobra.Command, path string, w io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		return err
	}
	for {
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		select {
		case <-cmd.Context().Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (a *app) doctorCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check the host's capabilities and show the daemon's choices",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return show(a, cmd, (*api.Client).Doctor, writeDoctor)
		},
	}
}
