package cli

import (
	"bytes"
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

func (a *app) sessionCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "session", Short: "Run and drive long-lived processes inside a VM"}
	cmd.AddCommand(a.sessionStartCommand(), a.sessionAttachCommand())
	cmd.AddCommand(&cobra.Command{
		Use: "list VM", Aliases: []string{"ls"}, Short: "List a VM's sessions", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return showList(a, cmd, func(c *api.Client, ctx context.Context) ([]model.Session, error) {
				return c.ListSessions(ctx, args[0])
			}, sessionTable)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use: "show VM SESSION", Short: "Show a session", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.Session, error) {
				return c.GetSession(ctx, args[0], args[1])
			}, writeSession)
		},
	})
	var lreq api.SessionLogsRequest
	logs := &cobra.Command{
		Use: "logs VM SESSION", Short: "Print a session's stdout (or stderr)", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			err = c.SessionLogs(cmd.Context(), args[0], args[1], lreq, a.stdout)
			if lreq.Follow && errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	logs.Flags().BoolVar(&lreq.Stderr, "stderr", false, "stderr instead of stdout")
	logs.Flags().IntVar(&lreq.Tail, "tail", 0, "only the last N lines")
	logs.Flags().BoolVarP(&lreq.Follow, "follow", "f", false, "keep printing new output")
	cmd.AddCommand(logs)
	var raw bool
	send := &cobra.Command{
		Use:   "send VM SESSION [DATA | -]",
		Short: "Write a line (or stdin, with -) to a session's stdin and print the byte count",
		Long: "Write DATA, or all of standard input when DATA is -, to the stdin of a running\n" +
			"pipe-mode session, and print how many bytes were written.\n\n" +
			"DATA is sent as one line: a newline is added unless it already ends with one\n" +
			"or --raw (-n) is given, so two sends reach a line reader as two lines.\n" +
			"Standard input is sent byte for byte, as it is. Empty input sends nothing.",
		Example: "  banger session send dev agent '{\"method\":\"ping\"}'\n" +
			"  banger session send -n dev agent 'partial '\n" +
			"  banger session send dev agent - < requests.jsonl",
		Args: cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := sendData(args[2:], a.stdin, raw)
			if err != nil {
				return err
			}
			if len(data) == 0 {
				// Nothing to write: no daemon, no connection.
				fmt.Fprintln(a.stdout, 0)
				return nil
			}
			return show(a, cmd, func(c *api.Client, ctx context.Context) (api.SendResult, error) {
				n, err := c.SendSession(ctx, args[0], args[1], bytes.NewReader(data))
				return api.SendResult{Bytes: n}, err
			}, func(w io.Writer, r api.SendResult) error {
				_, err := fmt.Fprintln(w, r.Bytes)
				return err
			})
		},
	}
	send.Flags().BoolVarP(&raw, "raw", "n", false, "send DATA exactly, without adding a newline")
	cmd.AddCommand(send)
	var sreq api.StopSessionRequest
	var stopTimeout time.Duration
	stop := &cobra.Command{
		Use: "stop VM SESSION", Short: "Stop a session (TERM, then KILL after --timeout)", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			r := sreq
			r.TimeoutSeconds = int(stopTimeout.Seconds())
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.Session, error) {
				return c.StopSession(ctx, args[0], args[1], r)
			}, writeSession)
		},
	}
	stop.Flags().StringVar(&sreq.Signal, "signal", "", "signal to send first (default TERM)")
	stop.Flags().DurationVar(&stopTimeout, "timeout", 0, "wait before KILL (default 10s)")
	cmd.AddCommand(stop)
	var signal string
	kill := &cobra.Command{
		Use: "kill VM SESSION", Short: "Send a signal (default KILL) to a session", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.Session, error) {
				return c.KillSession(ctx, args[0], args[1], signal)
			}, writeSession)
		},
	}
	kill.Flags().StringVar(&signal, "signal", "", "signal (default KILL)")
	cmd.AddCommand(kill)
	cmd.AddCommand(&cobra.Command{
		Use: "rm VM SESSION", Aliases: []string{"remove"}, Short: "Remove a finished session's record", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.removeEach(cmd, args[1:], func(c *api.Client, ctx context.Context, s string) error {
				return c.RemoveSession(ctx, args[0], s)
			})
		},
	})
	return cmd
}

// sendData is DATA as a line (newline added unless it ends with one or raw
// is set), or stdin exactly for "-", or nothing. A line, because sessions
// are mostly line readers (JSON lines) and a DATA without its newline
// would sit in their buffer and merge with the next send.
func sendData(args []string, stdin io.Reader, raw bool) ([]byte, error) {
	if len(args) == 0 {
		return nil, nil
	}
	if args[0] == "-" {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("read stdin: %w", err)
		}
		return b, nil
	}
	data := []byte(args[0])
	if !raw && !bytes.HasSuffix(data, []byte("\n")) {
		data = append(data, '\n')
	}
	return data, nil
}

// parseEnv turns K=V flags into a map.
func parseEnv(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	env := map[string]string{}
	for _, s := range kvs {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t\n") {
			return nil, fmt.Errorf("invalid --env %q: use NAME=VALUE", s)
		}
		env[k] = v
	}
	return env, nil
}

func (a *app) sessionStartCommand() *cobra.Command {
	var req api.StartSessionRequest
	var env []string
	var attach bool
	var detachKeys string
	var wsDir, wsMode string
	var noGit bool
	cmd := &cobra.Command{
		Use:   "start VM [flags] -- CMD [ARGS...]",
		Short: "Start a long-running process in a VM",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			r := req
			var err error
			if r.Env, err = parseEnv(env); err != nil {
				return err
			}
			r.Command, r.Args = args[1], args[2:]
			var keys []byte
			if attach {
				if keys, err = parseDetachKeys(detachKeys); err != nil {
					return err
				}
			}
			if fd, isTerm := a.terminalFd(); r.TTY && isTerm {
				ws := windowSize(fd)
				r.Size = &ws
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			if wsDir != "" {
				fmt.Fprintf(a.stderr, "banger: copying %s into %s\n", wsDir, args[0])
				info, err := a.prepare(cmd.Context(), c, args[0], wsDir, api.WorkspaceRequest{Mode: wsMode}, noGit)
				if err != nil {
					return err
				}
				if r.Cwd == "" {
					r.Cwd = info.GuestPath // the session runs in the repository
				}
			}
			s, err := c.StartSession(cmd.Context(), args[0], r)
			if err != nil {
				return err
			}
			if !attach {
				return emit(a, s, writeSession)
			}
			fmt.Fprintf(a.stderr, "banger: session %s started\n", s.Name)
			// From the first byte: what the session wrote before the
			// attachment began is shown too.
			return a.attach(cmd.Context(), c, args[0], s, api.AttachRequest{From: api.AttachFromStart}, keys)
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Name, "name", "", "session name (default <command>-<shortid>)")
	f.StringVar(&req.Cwd, "cwd", "", "working directory (default /root)")
	f.StringArrayVar(&env, "env", nil, "environment variable NAME=VALUE (repeatable)")
	f.StringVar(&req.Stdin, "stdin", "", "pipe (default: send and attach can write) or closed")
	f.StringArrayVar(&req.Require, "require", nil, "command that must exist in the guest (repeatable)")
	f.BoolVarP(&req.TTY, "tty", "t", false, "run the command on a terminal in the guest (its size: yours, else 80x24); all its output goes to stdout")
	f.BoolVar(&attach, "attach", false, "attach once started, showing its output from the first byte")
	f.StringVar(&detachKeys, "detach-keys", DefaultDetachKeys, "with --attach: keys that detach from a terminal")
	f.StringVar(&wsDir, "workspace", "", "copy this git repository into the VM first; the cwd defaults to it")
	f.StringVar(&wsMode, "workspace-mode", "", "full (with git history, default) or tracked")
	f.BoolVar(&noGit, "no-git", false, "the workspace is a plain directory, not a git repository: copy all of it")
	return cmd
}

func (a *app) sessionAttachCommand() *cobra.Command {
	var detachKeys string
	cmd := &cobra.Command{
		Use:   "attach VM SESSION",
		Short: "Attach to a session: your input to its stdin, its output to yours",
		Long: "Attach to a session exclusively: standard input goes to its stdin, its stdout\n" +
			"and stderr come back from the moment of attaching (nothing written since is\n" +
			"lost or repeated). The session keeps running when you detach.\n\n" +
			"From a terminal, keys go through at once: in raw mode for a --tty session (its\n" +
			"terminal echoes, Ctrl-C reaches it, its size follows yours), else with local\n" +
			"echo. Detach with Ctrl-P Ctrl-Q (--detach-keys changes them), or by ending\n" +
			"stdin (EOF) when it is not a terminal.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			keys, err := parseDetachKeys(detachKeys)
			if err != nil {
				return err
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			s, err := c.GetSession(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return a.attach(cmd.Context(), c, args[0], s, api.AttachRequest{}, keys)
		},
	}
	cmd.Flags().StringVar(&detachKeys, "detach-keys", DefaultDetachKeys, "keys that detach from a terminal: comma-separated characters or ctrl-X")
	return cmd
}

// attach bridges the user's streams and a session until the session ends
// or the user detaches. From a terminal: raw mode for a --tty session
// (with its size sent at the start and on every change), cbreak otherwise,
// and keys detaches.
func (a *app) attach(ctx context.Context, c *api.Client, vm string, s model.Session, req api.AttachRequest, keys []byte) error {
	st, err := c.AttachSession(ctx, vm, s.ID, req)
	if err != nil {
		return err
	}
	defer st.Close()
	a.leftOnInterrupt = "detached; session " + s.Name + " keeps running"
	tty := s.AttachBackend == model.AttachPTY
	fd, isTerm := a.terminalFd()
	nl := "\n" // a terminal in raw mode needs its carriage return
	if isTerm {
		nl = "\r\n"
		mode := cbreak
		if tty {
			mode = rawMode
		}
		restore, err := mode(fd)
		if err != nil {
			return fmt.Errorf("set up the terminal: %w", err)
		}
		defer restore()
		fmt.Fprintf(a.stderr, "banger: attached to %s; %s detaches%s", s.Name, keyNames(keys), nl)
		if tty {
			_ = st.Resize(windowSize(fd))
			defer followWindow(fd, st)()
		}
	} else {
		keys = nil
	}
	go func() {
		copyInput(st, a.stdin, keys)
		st.Detach()
	}()
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	end, err := st.Receive(a.stdout, a.stderr)
	if isTerm {
		fmt.Fprint(a.stderr, nl) // the session's last line may lack its end
	}
	if err != nil {
		return err
	}
	switch end.Reason {
	case api.AttachExited:
		fmt.Fprintf(a.stderr, "banger: session exited with code %d%s", end.ExitCode, nl)
		if end.ExitCode != 0 {
			return exitCode(end.ExitCode)
		}
	default:
		fmt.Fprintf(a.stderr, "banger: detached; session %s keeps running%s", s.Name, nl)
	}
	return nil
}

// keyNames spells a detach sequence for the user, e.g. "Ctrl-P Ctrl-Q".
func keyNames(keys []byte) string {
	var names []string
	for _, k := range keys {
		if k < 0x20 {
			names = append(names, "Ctrl-"+string(rune(k+'@')))
		} else {
			names = append(names, string(rune(k)))
		}
	}
	return strings.Join(names, " ")
}
