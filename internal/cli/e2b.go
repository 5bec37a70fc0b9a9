package cli

import (
	"context"
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
)

func (a *app) e2bCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "e2b",
		Short: "Serve E2B's sandbox API so code written for E2B's SDK runs on banger",
		Long: `bangerd can answer E2B's SDK (npm/PyPI "e2b"): sandboxes are banger VMs,
and each guest serves E2B's in-sandbox API. Point the SDK at it with
E2B_API_URL and E2B_SANDBOX_URL (both the listener's URL) and an API key
made here as E2B_API_KEY. See docs/e2b.md.`,
	}
	var listen, domain, dnsAddr string
	var useTLS bool
	serve := &cobra.Command{
		Use:   "serve",
		Short: "Start the E2B listener; it is served again whenever bangerd starts, until e2b stop",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (api.E2BStatus, error) {
				return c.E2BServe(ctx, api.E2BServeRequest{Listen: listen, Domain: domain, TLS: useTLS, DNS: dnsAddr})
			}, writeE2BStatus)
		},
	}
	serve.Flags().StringVar(&listen, "listen", "", "HOST:PORT to listen on (default 127.0.0.1:3000)")
	serve.Flags().StringVar(&domain, "domain", "", "suffix of sandbox host names <port>-<id>.DOMAIN (default localhost:PORT)")
	serve.Flags().BoolVar(&useTLS, "tls", false, "serve HTTPS with certificates of banger's own CA (banger e2b ca prints it)")
	serve.Flags().StringVar(&dnsAddr, "dns", "", "IP:PORT to also answer DNS on: every name under the domain resolves to the listener (for E2B_DOMAIN)")
	cmd.AddCommand(serve)
	cmd.AddCommand(&cobra.Command{
		Use:   "ca",
		Short: "Print the certificate of the CA behind e2b serve --tls, for clients to trust",
		Long: `Print the PEM certificate of banger's own CA (made on first use, kept in
the state directory; its key never leaves it). Save it and point clients
at it: NODE_EXTRA_CA_CERTS for Node, SSL_CERT_FILE or REQUESTS_CA_BUNDLE
for Python. With --json, its path on the daemon's host too.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (api.E2BCA, error) {
				return c.E2BCA(ctx)
			}, func(w io.Writer, ca api.E2BCA) error {
				_, err := io.WriteString(w, ca.PEM)
				return err
			})
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "stop",
		Short: "Close the E2B listener (sandboxes keep running until their timeout)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			if err := c.E2BStop(cmd.Context()); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, "stopped")
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Say where the E2B listener is",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (api.E2BStatus, error) {
				return c.E2BStatus(ctx)
			}, writeE2BStatus)
		},
	})
	key := &cobra.Command{Use: "key", Short: "Manage the API keys of the E2B listener"}
	var maxSandboxes int
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Make an API key; it is printed once and only its hash is kept",
		Long: `Make an API key; it is printed once and only its hash is kept.
With --max-sandboxes N, at most N sandboxes made with the key exist at
once (running or paused); one more create answers 429, as E2B's limit on
concurrent sandboxes does (the SDK raises RateLimitError).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (api.E2BKeyCreated, error) {
				return c.CreateE2BKey(ctx, api.E2BKeyRequest{Name: args[0], MaxSandboxes: maxSandboxes})
			}, func(w io.Writer, k api.E2BKeyCreated) error {
				_, err := fmt.Fprintln(w, k.Key)
				return err
			})
		},
	}
	create.Flags().IntVar(&maxSandboxes, "max-sandboxes", 0, "most sandboxes made with this key that exist at once (0: no cap)")
	key.AddCommand(create)
	key.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the API keys (names and prefixes, never the keys)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return showList(a, cmd, func(c *api.Client, ctx context.Context) ([]model.E2BKey, error) {
				return c.ListE2BKeys(ctx)
			}, func(w io.Writer, keys []model.E2BKey) error {
				rows := make([][]string, 0, len(keys))
				for _, k := range keys {
					used := "never"
					if k.LastUsed != nil {
						used = k.LastUsed.UTC().Format(keyTime)
					}
					limit := "-"
					if k.MaxSandboxes > 0 {
						limit = strconv.Itoa(k.MaxSandboxes)
					}
					rows = append(rows, []string{k.Name, k.Prefix + "…", limit, k.CreatedAt.UTC().Format(keyTime), used})
				}
				return table(w, []string{"NAME", "KEY", "MAX SANDBOXES", "CREATED", "LAST USED"}, rows)
			})
		},
	})
	key.AddCommand(&cobra.Command{
		Use:   "revoke NAME...",
		Short: "Delete API keys; requests with them are refused at once",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.removeEach(cmd, args, func(c *api.Client, ctx context.Context, ref string) error {
				return c.RevokeE2BKey(ctx, ref)
			})
		},
	})
	cmd.AddCommand(key)
	return cmd
}

// keyTime is how key times are shown (UTC; the last use is recorded at
// most once a minute).
const keyTime = "2006-01-02 15:04"

func writeE2BStatus(w io.Writer, s api.E2BStatus) error {
	if s.Listen == "" {
		_, err := fmt.Fprintln(w, "not listening (banger e2b serve, or the e2b_listen setting)")
		return err
	}
	scheme, trust := "http", ""
	if s.TLS {
		scheme, trust = "https", " NODE_EXTRA_CA_CERTS=<banger e2b ca output>"
	}
	env := fmt.Sprintf("E2B_API_URL=%s://%s E2B_SANDBOX_URL=%s://%s%s", scheme, s.Listen, scheme, s.Listen, trust)
	// With names that resolve, the SDK needs only the domain (over
	// HTTPS, which is all it speaks to a domain).
	domainEnv := ""
	if s.DNS != "" && s.TLS {
		domainEnv = fmt.Sprintf("E2B_DOMAIN=%s%s (resolver: %s)", s.Domain, trust, s.DNS)
	}
	return kv(w, "listen", s.Listen, "domain", s.Domain, "dns", s.DNS, "env", env, "or env", domainEnv)
}
