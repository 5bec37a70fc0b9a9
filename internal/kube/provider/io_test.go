package provider

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	vkapi "github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/testenv"
)

// stream is a port-forward data stream: what the client sent, and what
// came back.
type stream struct {
	in  io.Reader
	out bytes.Buffer
}

func (s *stream) Read(p []byte) (int, error)  { return s.in.Read(p) }
func (s *stream) Write(p []byte) (int, error) { return s.out.Write(p) }
func (s *stream) Close() error                { return nil }

// TestPortForwardPassesTheEndOn: the client's data reaches the guest
// port, its end reaches the guest as a half-close (the guest answers
// only then), and the answer comes back; a port nothing listens on is
// an error.
func TestPortForwardPassesTheEndOn(t *testing.T) {
	f := newFake()
	f.guestPort = testenv.Serve(testenv.Listen(t, "tcp", "127.0.0.1:0"), func(c net.Conn) {
		b, _ := io.ReadAll(c)
		_, _ = c.Write(append([]byte("got:"), b...))
	})
	pod := testPod("pf", "pfpf", "default", corev1.RestartPolicyNever)
	p := newProvider(f, pod)
	ctx := context.Background()
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	s := &stream{in: strings.NewReader("hello")}
	if err := p.PortForward(ctx, "default", "pf", 8000, s); err != nil {
		t.Fatal(err)
	}
	if got := s.out.String(); got != "got:hello" {
		t.Fatalf("forwarded answer %q", got)
	}
	if err := p.PortForward(ctx, "default", "pf", 9, &stream{in: strings.NewReader("")}); err == nil {
		t.Fatal("forward to a port nothing listens on")
	}
	if err := p.PortForward(ctx, "default", "nope", 8000, &stream{in: strings.NewReader("")}); err == nil {
		t.Fatal("forward to a pod not on the node")
	}
}

type sizes struct{ got []api.WindowSize }

func (s *sizes) Resize(ws api.WindowSize) error { s.got = append(s.got, ws); return nil }

// TestFollowSizes: sizes are passed on, one bangerd refuses is dropped,
// and the zero size a closed channel gives ends the following (no spin).
func TestFollowSizes(t *testing.T) {
	ch := make(chan vkapi.TermSize, 4)
	ch <- vkapi.TermSize{Width: 100, Height: 30}
	ch <- vkapi.TermSize{Width: 20000, Height: 30}
	ch <- vkapi.TermSize{Width: 80, Height: 24}
	close(ch)
	var s sizes
	done := make(chan struct{})
	returned := make(chan struct{})
	go func() { followSizes(done, ch, &s); close(returned) }()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("followSizes did not end on a closed channel")
	}
	want := []api.WindowSize{{Cols: 100, Rows: 30}, {Cols: 80, Rows: 24}}
	if len(s.got) != 2 || s.got[0] != want[0] || s.got[1] != want[1] {
		t.Fatalf("sizes %+v, want %+v", s.got, want)
	}
}

// TestStatusIsPushedWhenASessionEnds: once the pod controller listens,
// a created pod is pushed Running at once, and the end of its session
// is pushed well before the next sweep.
func TestStatusIsPushedWhenASessionEnds(t *testing.T) {
	f := newFake()
	pod := testPod("w", "wwww", "default", corev1.RestartPolicyNever)
	p := newProvider(f, pod)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pushed := make(chan corev1.PodPhase, 16)
	p.NotifyPods(ctx, func(pod *corev1.Pod) { pushed <- pod.Status.Phase })
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	wait := func(want corev1.PodPhase, within time.Duration) {
		t.Helper()
		deadline := time.After(within)
		for {
			select {
			case ph := <-pushed:
				if ph == want {
					return
				}
			case <-deadline:
				t.Fatalf("no %s pushed within %s", want, within)
			}
		}
	}
	wait(corev1.PodRunning, 2*time.Second)
	time.Sleep(50 * time.Millisecond) // the watch is on
	// A sweep while every running session is watched asks the guest
	// nothing; a full read (a poke, the pod controller) does.
	before := f.count("ls ")
	if st, err := p.status(ctx, "default", "w", false); err != nil || st.Phase != corev1.PodRunning || f.count("ls ") != before {
		t.Fatalf("sweep status %+v, %v: %d session reads, want none", st, err, f.count("ls ")-before)
	}
	if _, err := p.GetPodStatus(ctx, "default", "w"); err != nil || f.count("ls ") != before+1 {
		t.Fatalf("GetPodStatus: %v, %d session reads, want one", err, f.count("ls ")-before)
	}
	f.setSession("k8s-wwww", "main", model.SessionFailed, 3)
	wait(corev1.PodFailed, sweepEvery/2)
}

// TestCreatedPodIsPushedWithoutAskingTheGuestAgain: a pod whose VM
// CreatePod makes is pushed Running from the VM's record and its
// sessions' start answers: no session list before the starts (a new VM
// has none) nor after (the answers are the sessions).
func TestCreatedPodIsPushedWithoutAskingTheGuestAgain(t *testing.T) {
	f := newFake()
	pod := testPod("n", "nnnn", "default", corev1.RestartPolicyNever)
	pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "side", Image: "default", Command: []string{"sleep", "9"}})
	p := newProvider(f, pod)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pushed := make(chan *corev1.Pod, 16)
	p.NotifyPods(ctx, func(pod *corev1.Pod) { pushed <- pod })
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-pushed:
		if got.Status.Phase != corev1.PodRunning || len(got.Status.ContainerStatuses) != 2 || !got.Status.ContainerStatuses[1].Ready {
			t.Fatalf("first push %+v", got.Status)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("nothing pushed")
	}
	if n := f.count("ls "); n != 0 || f.count("start ") != 2 {
		t.Fatalf("calls %v: want two starts and no session list", f.calls)
	}
}

// TestSessionEndedBeforeItsWatchIsPushedAtOnce: a container that ended
// before its watch began (`true`) is pushed finished at once, not a
// watch retry later.
func TestSessionEndedBeforeItsWatchIsPushedAtOnce(t *testing.T) {
	f := newFake()
	f.quickExit = true
	pod := testPod("q", "qqqq", "default", corev1.RestartPolicyNever)
	p := newProvider(f, pod)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pushed := make(chan corev1.PodPhase, 16)
	p.NotifyPods(ctx, func(pod *corev1.Pod) { pushed <- pod.Status.Phase })
	start := time.Now()
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(watchRetry / 2)
	for {
		select {
		case ph := <-pushed:
			if ph == corev1.PodSucceeded {
				t.Logf("Succeeded pushed %s after create", time.Since(start))
				return
			}
		case <-deadline:
			t.Fatalf("Succeeded not pushed within %s", watchRetry/2)
		}
	}
}

// TestStatsSummarySamplesTheGuest: the summary carries each running
// pod's guest sample, a CPU rate from the second sample on, and leaves
// out a pod whose guest answers what its VM cannot have.
func TestStatsSummarySamplesTheGuest(t *testing.T) {
	f := newFake()
	pod := testPod("st", "stst", "default", corev1.RestartPolicyNever)
	p := newProvider(f, pod)
	ctx := context.Background()
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	started := time.Now().Add(-time.Hour)
	f.mu.Lock()
	f.vms["k8s-stst"].MemoryMiB, f.vms["k8s-stst"].CPUs, f.vms["k8s-stst"].StartedAt = 512, 1, &started
	f.execOut = "cpu 100 0 100 5000 0 0 0 0 0 0\nMemTotal: 400000 kB\nMemAvailable: 300000 kB\n"
	f.mu.Unlock()
	s, err := p.GetStatsSummary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Pods) != 1 || *s.Pods[0].Memory.WorkingSetBytes != 100000<<10 || *s.Pods[0].CPU.UsageCoreNanoSeconds != 2e9 || s.Pods[0].CPU.UsageNanoCores != nil {
		t.Fatalf("first summary %+v", s.Pods)
	}
	f.mu.Lock()
	f.execOut = "cpu 200 0 100 5000 0 0 0 0 0 0\nMemTotal: 400000 kB\nMemAvailable: 300000 kB\n"
	f.mu.Unlock()
	s, _ = p.GetStatsSummary(ctx)
	if len(s.Pods) != 1 || s.Pods[0].CPU.UsageNanoCores == nil {
		t.Fatalf("second summary has no CPU rate: %+v", s.Pods)
	}
	f.mu.Lock()
	f.execOut = "cpu 200 0 100 5000 0 0 0 0 0 0\nMemTotal: 99999999 kB\nMemAvailable: 300000 kB\n"
	f.mu.Unlock()
	if s, _ = p.GetStatsSummary(ctx); len(s.Pods) != 0 {
		t.Fatalf("a guest claiming more memory than its VM has was reported: %+v", s.Pods)
	}
	mf, err := p.GetMetricsResource(ctx)
	if err != nil || len(mf) == 0 {
		t.Fatalf("metrics %v, %v", mf, err)
	}
}
