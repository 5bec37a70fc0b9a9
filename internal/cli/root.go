// Package cli is the banger command line: cobra commands that call bangerd
// through api.Client, start the daemon when it is not running, and render
// answers as tables or JSON.
//
// It holds no VM logic and touches no host state itself, apart from
// starting bangerd, reading the user's repository for workspaces, and
// exec'ing the system ssh.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/version"
)

// exitCode ends banger with a code and no message of its own (the guest
// command's code for exec and run).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// interrupt is the cause of the commands' context once banger got SIGINT
// or SIGTERM. Like the standard library's, it is context.Canceled to
// errors.Is, so code that treats a cancel as a normal end still does.
type interrupt struct{ sig syscall.Signal }

func (i interrupt) Error() string { return i.sig.String() + " received" }

func (i interrupt) Is(target error) bool { return target == context.Canceled }

// word is how banger's last line names the interruption.
func (i interrupt) word() string {
	if i.sig == syscall.SIGTERM {
		return "terminated"
	}
	return "interrupted"
}

// app is what every command shares: global flags and the streams.
type app struct {
	socket   string
	stateDir string
	json     bool

	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string

	// quiet drops banger's own notes (a daemon started on demand) from
	// stderr when it is a guest command's (vm run without --verbose).
	quiet bool

	// leftOnInterrupt says what an interruption at this point of the
	// command cleaned up or left behind (e.g. "deleted vm run-1a2b"); run
	// prints it on banger's one line when a signal ended the command.
	leftOnInterrupt string
}

// Main runs banger with args and returns the process exit code.
func Main(args []string) int {
	a := &app{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	return a.run(args)
}

// run runs banger with args on a's streams and returns the exit code.
func (a *app) run(args []string) int {
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(a.stdout) // help text
	root.SetErr(a.stderr)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			// The first signal cancels and lets the command clean up; a
			// second one ends banger at once (the default action).
			signal.Stop(sigs)
			cancel(interrupt{s.(syscall.Signal)})
		case <-ctx.Done():
		}
	}()
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		err = unknownCommand(cmd)
	}
	code, line := exitStatus(err, context.Cause(ctx), a.leftOnInterrupt)
	if line != "" {
		fmt.Fprintln(a.stderr, line)
	}
	return code
}

// exitStatus maps how a command ended to banger's exit code and its last
// stderr line (none when empty). A signal wins over the error it caused
// (a cancelled request's message means nothing to the user): the code is
// 128+signal, as a shell reports a process the signal killed, and the one
// line says what was cleaned up or left.
func exitStatus(err, cause error, left string) (int, string) {
	var in interrupt
	if errors.As(cause, &in) {
		line := "banger: " + in.word()
		if left != "" {
			line += "; " + left
		}
		return 128 + int(in.sig), line
	}
	if err == nil {
		return 0, ""
	}
	var code exitCode
	if errors.As(err, &code) {
		return int(code), ""
	}
	return 1, fmt.Sprintf("banger: %v", err)
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "banger",
		Short:         "Disposable, hardware-isolated Linux machines with your repository inside",
		SilenceUsage:  true,
		SilenceErrors: true,
		CompletionOptions: cobra.CompletionOptions{
			// banger's own `completion` (completion.go) offers only the
			// shells whose scripts its tests parse.
			DisableDefaultCmd: true,
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.socket, "socket", "", "bangerd API socket (env BANGER_SOCKET; default <state-dir>/bangerd.sock)")
	pf.StringVar(&a.stateDir, "state-dir", "", "bangerd state directory (env BANGER_STATE_DIR; default /var/lib/banger)")
	pf.BoolVar(&a.json, "json", false, "print JSON instead of tables")
	help := root.HelpFunc()
	root.SetHelpFunc(func(cmd *cobra.Command, args []string) {
		if unknownCommand(cmd) == nil { // else run reports it instead
			help(cmd, args)
		}
	})
	root.AddCommand(
		a.versionCommand(),
		a.daemonCommand(),
		a.doctorCommand(),
		a.imageCommand(),
		a.kernelCommand(),
		a.vmCommand(),
		a.sessionCommand(),
		a.e2bCommand(),
		a.completionCommand(),
	)
	a.completeNames(root)
	return root
}

// unknownCommand is the error for a command group given a word that is
// none of its commands. Cobra reports that itself only at the root; a
// group, having no Run of its own, would show its help and succeed.
func unknownCommand(cmd *cobra.Command) error {
	if !cmd.HasSubCommands() || cmd.Runnable() || cmd.Flags().NArg() == 0 {
		return nil
	}
	word := cmd.Flags().Arg(0)
	msg := fmt.Sprintf("unknown command %q for %q", word, cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's default, set where it suggests at the root
	}
	if s := cmd.SuggestionsFor(word); len(s) > 0 {
		msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t") + "\n" // as cobra words it at the root
	}
	return errors.New(msg)
}

// resolvedStateDir is the state dir from the flag, the environment, or the
// default.
func (a *app) resolvedStateDir() string {
	if a.stateDir != "" {
		return a.stateDir
	}
	if v := a.getenv("BANGER_STATE_DIR"); v != "" {
		return v
	}
	return config.Defaults().StateDir
}

// resolvedSocket is the socket from the flag, the environment, or the
// state dir.
func (a *app) resolvedSocket() string {
	if a.socket != "" {
		return a.socket
	}
	if v := a.getenv("BANGER_SOCKET"); v != "" {
		return v
	}
	return filepath.Join(a.resolvedStateDir(), "bangerd.sock")
}

func (a *app) logPath() string { return filepath.Join(a.resolvedStateDir(), "bangerd.log") }

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the CLI's and the daemon's versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (map[string]version.Info, error) {
				dv, err := c.Version(ctx)
				return map[string]version.Info{"cli": version.Current(), "daemon": dv}, err
			}, func(w io.Writer, v map[string]version.Info) error {
				cv, dv := v["cli"], v["daemon"]
				_, err := fmt.Fprintf(w, "banger  %s %s %s\nbangerd %s %s %s\n", cv.Version, short(cv.Commit), cv.GoVersion, dv.Version, short(dv.Commit), dv.GoVersion)
				return err
			})
		},
	}
}

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}
