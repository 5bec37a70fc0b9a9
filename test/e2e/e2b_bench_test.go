package e2e

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/testenv"
)

// e2bNode is the Node command line for a script of testdata with only the
// E2B variables (and the location of SDK version) set.
func e2bNode(tb testing.TB, ctx context.Context, h *Harness, version string, args ...string) *exec.Cmd {
	tb.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		tb.Fatal("node is required for the E2B SDK tests")
	}
	sdk := filepath.Join(testenv.CacheDir(), "npm", "e2b@"+version)
	if _, err := os.Stat(filepath.Join(sdk, "node_modules", "e2b", "package.json")); err != nil {
		tb.Fatalf("e2b SDK %s missing under %s: run scripts/e2b-sdk.sh", version, sdk)
	}
	if h.e2bURL == "" {
		tb.Fatal("e2bNode before E2BServe")
	}
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + tb.TempDir(), "E2B_SDK_DIR=" + sdk,
		"E2B_API_URL=" + h.e2bURL, "E2B_SANDBOX_URL=" + h.e2bURL, "E2B_API_KEY=" + h.e2bKey}
	return cmd
}

// E2BServe starts the daemon's E2B listener on the host's 127.0.0.1 and
// makes an API key, for e2bNode.
func (h *Harness) E2BServe() {
	h.t.Helper()
	var st struct{ Listen string }
	h.JSON(&st, "e2b", "serve", "--listen", "127.0.0.1:0")
	h.e2bURL = "http://" + st.Listen
	h.e2bKey = strings.TrimSpace(h.MustRun("e2b", "key", "create", "e2e"))
}

// BenchmarkE2B compares, in the same run, Sandbox.create() plus the first
// commands.run('true') with `banger vm run --rm -- true`, and
// commands.run('true') on a running sandbox with `banger vm exec` on the
// same VM (of `true`, and of the login shell the SDK asks for). It reports
// the medians and their ratios (goals: <= 1.1 and <= 1.0).
func BenchmarkE2B(b *testing.B) {
	if os.Getenv("BANGER_BENCH") != "1" {
		b.Skip("set BANGER_BENCH=1 (with BANGER_E2E=1) to run the E2B benchmarks")
	}
	h := NewHarness(b)
	h.MustRun("vm", "run", "--rm", "--", "true") // the default image and kernel exist from here on
	h.E2BServe()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	ms := func(s string) time.Duration {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			b.Fatalf("timing %q: %v", s, err)
		}
		return time.Duration(f * float64(time.Millisecond))
	}
	var create, vmrun, sdkRun, vmExec, vmExecLogin []time.Duration
	var createOnly, firstRun []time.Duration // the two parts of create
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := 0; j < 3; j++ {
			out, err := e2bNode(b, ctx, h, e2bSDKVersions[0], "testdata/e2b_bench.cjs", "create").CombinedOutput()
			if err != nil {
				b.Fatalf("create bench: %v\n%s", err, out)
			}
			_, v, _ := strings.Cut(strings.TrimSpace(string(out)), "create-run-ms ")
			f := strings.Fields(v)
			if len(f) != 3 {
				b.Fatalf("create bench said %q", out)
			}
			create = append(create, ms(f[0]))
			createOnly, firstRun = append(createOnly, ms(f[1])), append(firstRun, ms(f[2]))
			start := time.Now()
			h.MustRun("vm", "run", "--rm", "--", "true")
			vmrun = append(vmrun, time.Since(start))
		}

		cmd := e2bNode(b, ctx, h, e2bSDKVersions[0], "testdata/e2b_bench.cjs", "runs")
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		next := func() []string {
			if !sc.Scan() {
				b.Fatalf("the runs script ended: %v", sc.Err())
			}
			return strings.Fields(sc.Text())
		}
		id := ""
		for f := next(); len(f) != 1 || f[0] != "ready"; f = next() {
			if len(f) == 2 && f[0] == "sandbox" {
				id = f[1]
			}
		}
		if id == "" {
			b.Fatal("the runs script named no sandbox")
		}
		// Interleaved, one of each per round, so that a change in the
		// host's load weighs on both sides alike.
		for k := 0; k < 15; k++ {
			if _, err := io.WriteString(stdin, "run\n"); err != nil {
				b.Fatal(err)
			}
			if f := next(); len(f) == 2 && f[0] == "run-ms" {
				sdkRun = append(sdkRun, ms(f[1]))
			} else {
				b.Fatalf("the runs script said %q", f)
			}
			start := time.Now()
			h.MustRun("vm", "exec", id, "--", "true")
			vmExec = append(vmExec, time.Since(start))
			// What the SDK asks envd to run: a login shell.
			start = time.Now()
			h.MustRun("vm", "exec", id, "--", "bash", "-l", "-c", "true")
			vmExecLogin = append(vmExecLogin, time.Since(start))
		}
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			b.Fatalf("runs script: %v", err)
		}
	}
	mc, mv, ms2, me := median(create), median(vmrun), median(sdkRun), median(vmExec)
	b.ReportMetric(mc.Seconds(), "s/sdk-create-run")
	b.ReportMetric(mv.Seconds(), "s/vm-run-true")
	b.ReportMetric(mc.Seconds()/mv.Seconds(), "ratio-create/vmrun")
	b.ReportMetric(median(createOnly).Seconds(), "s/sdk-create")
	b.ReportMetric(median(firstRun).Seconds()*1000, "ms/sdk-first-run")
	b.ReportMetric(ms2.Seconds()*1000, "ms/sdk-run")
	b.ReportMetric(me.Seconds()*1000, "ms/vm-exec")
	b.ReportMetric(ms2.Seconds()/me.Seconds(), "ratio-sdkrun/exec")
	// The SDK runs every command as `/bin/bash -l -c CMD`; the same
	// command through vm exec separates the login shell's cost from the
	// path's.
	ml := median(vmExecLogin)
	b.ReportMetric(ml.Seconds()*1000, "ms/vm-exec-bash-l")
	b.ReportMetric(ms2.Seconds()/ml.Seconds(), "ratio-sdkrun/exec-bash-l")
}
