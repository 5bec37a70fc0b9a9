package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger/banger/internal/envd"
)

// maxEnvdFile bounds the token and environment files envd reads.
const maxEnvdFile = 1 << 20

// runEnvd is `banger-init envd`: it serves E2B's in-sandbox API (see
// internal/envd) until SIGTERM/SIGINT. The access token comes from a file
// the daemon wrote (never from the guest's choice); an optional file of
// KEY=VALUE lines is the default environment of every command.
func runEnvd(args []string) int {
	fs := flag.NewFlagSet("envd", flag.ContinueOnError)
	listen := fs.String("listen", ":"+strconv.Itoa(envd.Port), "TCP address to listen on")
	tokenFile := fs.String("token-file", "", "file holding the access token (required)")
	envFile := fs.String("env-file", "", "file of KEY=VALUE lines: the default environment of commands")
	defaultUser := fs.String("user", "user", "user commands run as when a request names none")
	warm := fs.Bool("warm", false, "once listening, run a client's first requests (envd.WarmUp): for an envd started ahead of its sandbox")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *tokenFile == "" {
		fmt.Fprintln(os.Stderr, "banger-init envd: --token-file is required")
		return 2
	}
	// Taken from the start: a new token may come (SIGHUP) while envd is
	// still starting, and SIGHUP's default would end it. One that came
	// before the server was made is reloaded once it is.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	token, err := readSmall(*tokenFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "banger-init envd: token:", err)
		return 2
	}
	env := map[string]string{}
	if *envFile != "" {
		raw, err := readSmall(*envFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "banger-init envd: env file:", err)
			return 2
		}
		env = parseEnvLines(raw)
	}
	srv, err := envd.New(envd.Config{Token: strings.TrimSpace(token), DefaultUser: *defaultUser, Env: env})
	if err != nil {
		fmt.Fprintln(os.Stderr, "banger-init envd:", err)
		return 2
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "banger-init envd:", err)
		return 1
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 30 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		for range hup {
			if err := reload(srv, *tokenFile, *envFile); err != nil {
				fmt.Fprintln(os.Stderr, "banger-init envd: reload:", err)
			}
		}
	}()
	if *warm {
		go func() {
			_, port, _ := net.SplitHostPort(ln.Addr().String())
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			// A token given meanwhile refuses it: that is harmless.
			if err := envd.WarmUp(wctx, "http://"+net.JoinHostPort("127.0.0.1", port), strings.TrimSpace(token)); err != nil {
				fmt.Fprintln(os.Stderr, "banger-init envd: warm-up:", err)
			}
		}()
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "banger-init envd:", err)
		return 1
	}
	return 0
}

// reload is envd's SIGHUP: the daemon wrote a new token (and
// environment) next to the files envd started with, as NAME.new; they
// replace the server's and then the files, so the daemon, which waits
// for the .new files to go, knows the new token is in force. A bad token
// file changes nothing.
func reload(srv interface {
	Reconfigure(string, map[string]string) error
}, tokenFile, envFile string) error {
	raw, err := readSmall(tokenFile + ".new")
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	token := strings.TrimSpace(raw)
	env := map[string]string{}
	if envFile != "" {
		if _, err := os.Stat(envFile + ".new"); err == nil {
			rawEnv, err := readSmall(envFile + ".new")
			if err != nil {
				return fmt.Errorf("env file: %w", err)
			}
			env = parseEnvLines(rawEnv)
		} else if cur, err := readSmall(envFile); err == nil {
			env = parseEnvLines(cur)
		}
	}
	if err := srv.Reconfigure(token, env); err != nil {
		return err
	}
	if envFile != "" {
		if err := os.Rename(envFile+".new", envFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return os.Rename(tokenFile+".new", tokenFile)
}

// readSmall reads a file of at most maxEnvdFile bytes (an empty one is
// "": an empty token is refused by envd.New, an empty environment is
// none).
func readSmall(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxEnvdFile+1))
	if err != nil {
		return "", err
	}
	if len(b) > maxEnvdFile {
		return "", fmt.Errorf("%s is larger than %d bytes", path, maxEnvdFile)
	}
	return string(b), nil
}

// parseEnvLines reads KEY=VALUE lines; blank lines and lines without "="
// are skipped.
func parseEnvLines(s string) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok && k != "" {
			out[k] = v
		}
	}
	return out
}
