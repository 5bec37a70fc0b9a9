package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// completionShells are the shells `banger completion` writes scripts for.
var completionShells = []string{"bash", "zsh", "fish"}

func (a *app) completionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh|fish",
		Short: "Print the shell completion script of bash, zsh or fish",
		Long: "Print the completion script of a shell on stdout. Commands, flags, and the names\n" +
			"of VMs and sessions (asked of a running daemon) complete. To load it:\n\n" +
			"  bash: banger completion bash > /etc/bash_completion.d/banger\n" +
			"        (or, for this shell only: source <(banger completion bash))\n" +
			"  zsh:  banger completion zsh > \"${fpath[1]}/_banger\"\n" +
			"  fish: banger completion fish > ~/.config/fish/completions/banger.fish",
		Args:      cobra.ExactArgs(1),
		ValidArgs: completionShells,
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(a.stdout, true)
			case "zsh":
				return root.GenZshCompletion(a.stdout)
			case "fish":
				return root.GenFishCompletion(a.stdout, true)
			}
			return fmt.Errorf("no completion for shell %q: use %s", args[0], strings.Join(completionShells, ", "))
		},
	}
}

// completeNames sets, on every command whose usage starts "VM" (and
// "VM SESSION"), the completion of those arguments with the daemon's VM
// and session names; found by usage so that new commands get it too.
func (a *app) completeNames(cmd *cobra.Command) {
	for _, sub := range cmd.Commands() {
		a.completeNames(sub)
	}
	if cmd.ValidArgsFunction != nil {
		return
	}
	words := strings.Fields(cmd.Use)
	if len(words) < 2 || !strings.HasPrefix(words[1], "VM") {
		return
	}
	sessions := len(words) > 2 && words[2] == "SESSION"
	cmd.ValidArgsFunction = func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		switch {
		case len(args) == 0 || (strings.HasSuffix(words[1], "...") && !sessions):
			return a.vmNames(), cobra.ShellCompDirectiveNoFileComp
		case len(args) == 1 && sessions:
			return a.sessionNames(args[0]), cobra.ShellCompDirectiveNoFileComp
		case len(args) >= len(words)-1:
			return nil, cobra.ShellCompDirectiveNoFileComp // the usage has no more arguments
		}
		return nil, cobra.ShellCompDirectiveDefault
	}
}

// completionTimeout bounds a completion's question to the daemon: a shell
// waits for it.
const completionTimeout = 2 * time.Second

// vmNames is the VM names, or none when no daemon answers (a completion
// never starts one).
func (a *app) vmNames() []cobra.Completion {
	ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
	defer cancel()
	c, err := a.connected(ctx)
	if err != nil {
		return nil
	}
	vms, err := c.ListVMs(ctx)
	if err != nil {
		return nil
	}
	var out []cobra.Completion
	for _, v := range vms {
		out = append(out, cobra.CompletionWithDesc(v.Name, string(v.State)))
	}
	return out
}

// sessionNames is the session names of a VM, or none.
func (a *app) sessionNames(vm string) []cobra.Completion {
	ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
	defer cancel()
	c, err := a.connected(ctx)
	if err != nil {
		return nil
	}
	ss, err := c.ListSessions(ctx, vm)
	if err != nil {
		return nil
	}
	var out []cobra.Completion
	for _, s := range ss {
		out = append(out, cobra.CompletionWithDesc(s.Name, string(s.Status)))
	}
	return out
}
