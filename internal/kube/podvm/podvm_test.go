package podvm

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
)

const uid = "0b7c4a52-6f1e-4c1a-9a51-3d2f0e8b9c11"

func pod(containers ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "p", UID: uid},
		Spec:       corev1.PodSpec{Containers: containers, RestartPolicy: corev1.RestartPolicyNever},
	}
}

func ctr(name string, cmd ...string) corev1.Container {
	return corev1.Container{Name: name, Image: "default", Command: cmd}
}

func TestVMNameRoundTrip(t *testing.T) {
	name, err := VMName(uid)
	if err != nil || name != "k8s-"+uid {
		t.Fatalf("VMName = %q, %v", name, err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: uid, Namespace: "ns", Name: "web"}}
	if got, ok := UIDOf(model.VM{Name: name, Labels: PodLabels(pod)}); !ok || got != uid {
		t.Fatalf("UIDOf(%q) = %q, %v", name, got, ok)
	}
	for _, vm := range []model.VM{
		{Name: name},                          // named like a pod VM, no label: the user's
		{Name: "web", Labels: PodLabels(pod)}, // the label on a VM not named for it
		{Name: "k8s-", Labels: map[string]string{LabelPodUID: ""}},
	} {
		if _, ok := UIDOf(vm); ok {
			t.Errorf("UIDOf(%+v) claims a pod", vm)
		}
	}
	if err := model.ValidateLabels(PodLabels(pod)); err != nil {
		t.Errorf("pod labels are not valid VM labels: %v", err)
	}
	if _, err := VMName("Not_A/UID"); err == nil {
		t.Error("VMName accepted a UID that cannot name a VM")
	}
}

func TestPlanPodMapsContainersToSessions(t *testing.T) {
	c := ctr("main", "sh", "-c")
	c.Args = []string{"echo hi; exit 3"}
	c.WorkingDir = "/srv"
	c.Env = []corev1.EnvVar{{Name: "A", Value: "1"}, {Name: "B", Value: ""}}
	c.Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1500m"), corev1.ResourceMemory: resource.MustParse("300Mi")}
	side := ctr("side", "sleep", "100")
	side.Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("1000000")}
	p := pod(c, side)
	deadline := int64(90)
	p.Spec.ActiveDeadlineSeconds = &deadline
	plan, err := PlanPod(p)
	if err != nil {
		t.Fatal(err)
	}
	wantVM := api.CreateVMRequest{Name: "k8s-" + uid, Image: "default", CPUs: 2, Memory: "301M", Start: true, TTL: "90s", TTLAction: model.TTLStop,
		Labels: map[string]string{LabelPodUID: uid, LabelPodNamespace: "default", LabelPodName: "p"}}
	if !reflect.DeepEqual(plan.VM, wantVM) {
		t.Errorf("VM = %+v, want %+v", plan.VM, wantVM)
	}
	want := []api.StartSessionRequest{
		{Name: "main", Command: "sh", Args: []string{"-c", "echo hi; exit 3"}, Env: map[string]string{"A": "1", "B": ""}, Cwd: "/srv", Stdin: model.StdinClosed},
		{Name: "side", Command: "sleep", Args: []string{"100"}, Stdin: model.StdinClosed},
	}
	if !reflect.DeepEqual(plan.Sessions, want) {
		t.Errorf("sessions = %+v, want %+v", plan.Sessions, want)
	}
}

// TestPlanPodStdinAndTTY: a container with stdin gets a session whose
// stdin is a pipe (kubectl attach -i writes to it); one with a tty runs
// on a guest terminal, which needs the pipe too.
func TestPlanPodStdinAndTTY(t *testing.T) {
	in := ctr("in", "cat")
	in.Stdin = true
	term := ctr("term", "sh")
	term.TTY = true
	plan, err := PlanPod(pod(in, term))
	if err != nil {
		t.Fatal(err)
	}
	if s := plan.Sessions[0]; s.Stdin != model.StdinPipe || s.TTY {
		t.Errorf("stdin container: session %+v, want a pipe and no terminal", s)
	}
	if s := plan.Sessions[1]; s.Stdin != model.StdinPipe || !s.TTY {
		t.Errorf("tty container: session %+v, want a pipe and a terminal", s)
	}
}

func TestPlanPodArgsOnlyAndDefaults(t *testing.T) {
	c := corev1.Container{Name: "a", Image: "default", Args: []string{"true"}}
	plan, err := PlanPod(pod(c))
	if err != nil {
		t.Fatal(err)
	}
	if plan.VM.CPUs != 0 || plan.VM.Memory != "" || plan.VM.TTL != "" {
		t.Errorf("no resources given must leave bangerd's defaults: %+v", plan.VM)
	}
	if plan.Sessions[0].Command != "true" || len(plan.Sessions[0].Args) != 0 {
		t.Errorf("session = %+v", plan.Sessions[0])
	}
}

func TestPlanPodRefusesWhatBangerCannotRun(t *testing.T) {
	other := ctr("b", "true")
	other.Image = "other"
	mount := ctr("a", "true")
	mount.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	from := ctr("a", "true")
	from.Env = []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{}}}
	big := int64(31 * 24 * 3600)
	cases := []struct {
		name   string
		pod    *corev1.Pod
		reason string
		msg    string
	}{
		{"no command", pod(corev1.Container{Name: "a", Image: "default"}), ReasonUnsupported, "no command or args"},
		{"two images", pod(ctr("a", "true"), other), ReasonUnsupported, "different images"},
		{"docker image", pod(corev1.Container{Name: "a", Image: "nginx:1.27", Command: []string{"nginx"}}), ReasonUnknownImage, `"nginx:1.27" is not a banger image name`},
		{"volume mount", pod(mount), ReasonUnsupported, `mounts volume "data"`},
		{"valueFrom", pod(from), ReasonUnsupported, "valueFrom"},
		{"init", func() *corev1.Pod {
			p := pod(ctr("a", "true"))
			p.Spec.InitContainers = []corev1.Container{ctr("i", "true")}
			return p
		}(), ReasonUnsupported, "init containers"},
		{"host network", func() *corev1.Pod { p := pod(ctr("a", "true")); p.Spec.HostNetwork = true; return p }(), ReasonUnsupported, "hostNetwork"},
		{"volume", func() *corev1.Pod {
			p := pod(ctr("a", "true"))
			p.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
			return p
		}(), ReasonUnsupported, `volume "data"`},
		{"deadline", func() *corev1.Pod { p := pod(ctr("a", "true")); p.Spec.ActiveDeadlineSeconds = &big; return p }(), ReasonUnsupported, "1s to 30d"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := PlanPod(c.pod)
			var pe *PlanError
			if !errors.As(err, &pe) || pe.Reason != c.reason || !strings.Contains(pe.Message, c.msg) {
				t.Fatalf("err = %v (%#v), want %s containing %q", err, pe, c.reason, c.msg)
			}
		})
	}
}

func TestPlanPodToleratesServiceAccountVolume(t *testing.T) {
	c := ctr("a", "true")
	c.VolumeMounts = []corev1.VolumeMount{{Name: "kube-api-access-x1", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount"}}
	p := pod(c)
	p.Spec.Volumes = []corev1.Volume{{Name: "kube-api-access-x1", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}}}
	if _, err := PlanPod(p); err != nil {
		t.Fatal(err)
	}
}

func TestShouldRestart(t *testing.T) {
	for _, c := range []struct {
		policy corev1.RestartPolicy
		code   int
		want   bool
	}{
		{corev1.RestartPolicyNever, 1, false}, {corev1.RestartPolicyNever, 0, false},
		{corev1.RestartPolicyOnFailure, 0, false}, {corev1.RestartPolicyOnFailure, 3, true},
		{corev1.RestartPolicyAlways, 0, true}, {"", 0, true},
	} {
		if got := ShouldRestart(c.policy, c.code); got != c.want {
			t.Errorf("ShouldRestart(%s, %d) = %v", c.policy, c.code, got)
		}
	}
}

func intp(i int) *int { return &i }

func TestFinished(t *testing.T) {
	for _, c := range []struct {
		s    model.Session
		done bool
		code int
	}{
		{model.Session{Status: model.SessionRunning}, false, 0},
		{model.Session{Status: model.SessionStarting}, false, 0},
		{model.Session{Status: model.SessionExited, ExitCode: intp(0)}, true, 0},
		{model.Session{Status: model.SessionFailed, ExitCode: intp(3)}, true, 3},
		{model.Session{Status: model.SessionFailed, LaunchStage: "preflight_command"}, true, 128},
		{model.Session{Status: model.SessionStopped}, true, 143},
		{model.Session{Status: model.SessionFailed, Error: "vm is not running"}, true, 1},
	} {
		done, code := Finished(c.s)
		if done != c.done || code != c.code {
			t.Errorf("Finished(%+v) = %v, %d; want %v, %d", c.s, done, code, c.done, c.code)
		}
	}
}

func running() *model.VM {
	return &model.VM{Name: "k8s-" + uid, State: model.VMRunning, GuestIP: "172.16.0.5"}
}

func session(name string, st model.SessionStatus, code *int) model.Session {
	now := time.Unix(1700000000, 0)
	return model.Session{Name: name, Status: st, ExitCode: code, StartedAt: &now, CreatedAt: now}
}

func TestPodStatusPhases(t *testing.T) {
	two := pod(ctr("a", "true"), ctr("b", "true"))
	cases := []struct {
		name     string
		pod      *corev1.Pod
		policy   corev1.RestartPolicy
		vm       *model.VM
		sessions []model.Session
		phase    corev1.PodPhase
		ready    bool
	}{
		{"no vm yet", two, corev1.RestartPolicyNever, nil, nil, corev1.PodPending, false},
		{"booting", two, corev1.RestartPolicyNever, &model.VM{State: model.VMStarting}, nil, corev1.PodPending, false},
		{"one started", two, corev1.RestartPolicyNever, running(), []model.Session{session("a", model.SessionRunning, nil)}, corev1.PodRunning, false},
		{"all running", two, corev1.RestartPolicyNever, running(), []model.Session{session("a", model.SessionRunning, nil), session("b", model.SessionRunning, nil)}, corev1.PodRunning, true},
		{"one done one running", two, corev1.RestartPolicyNever, running(), []model.Session{session("a", model.SessionExited, intp(0)), session("b", model.SessionRunning, nil)}, corev1.PodRunning, false},
		{"all zero", two, corev1.RestartPolicyNever, running(), []model.Session{session("a", model.SessionExited, intp(0)), session("b", model.SessionExited, intp(0))}, corev1.PodSucceeded, false},
		{"one failed", two, corev1.RestartPolicyNever, running(), []model.Session{session("a", model.SessionExited, intp(0)), session("b", model.SessionFailed, intp(3))}, corev1.PodFailed, false},
		{"failed but restarts", two, corev1.RestartPolicyOnFailure, running(), []model.Session{session("a", model.SessionExited, intp(0)), session("b", model.SessionFailed, intp(3))}, corev1.PodRunning, false},
		{"onfailure all zero", two, corev1.RestartPolicyOnFailure, running(), []model.Session{session("a", model.SessionExited, intp(0)), session("b", model.SessionExited, intp(0))}, corev1.PodSucceeded, false},
		{"vm stopped under running", two, corev1.RestartPolicyNever, &model.VM{State: model.VMStopped}, []model.Session{session("a", model.SessionRunning, nil)}, corev1.PodFailed, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := c.pod.DeepCopy()
			p.Spec.RestartPolicy = c.policy
			st := PodStatus(p, Observed{VM: c.vm, Sessions: c.sessions, HostIP: "127.0.0.1", Now: time.Unix(1700000100, 0)})
			if st.Phase != c.phase {
				t.Fatalf("phase = %s, want %s (%+v)", st.Phase, c.phase, st)
			}
			ready := false
			for _, cond := range st.Conditions {
				if cond.Type == corev1.PodReady {
					ready = cond.Status == corev1.ConditionTrue
				}
			}
			if ready != c.ready {
				t.Errorf("ready = %v, want %v", ready, c.ready)
			}
			if len(st.ContainerStatuses) != 2 || st.ContainerStatuses[0].Name != "a" || st.ContainerStatuses[1].Name != "b" {
				t.Errorf("container statuses = %+v", st.ContainerStatuses)
			}
		})
	}
}

func TestPodStatusExitCodeAndIP(t *testing.T) {
	p := pod(ctr("main", "sh"))
	s := session("main", model.SessionFailed, intp(3))
	st := PodStatus(p, Observed{VM: running(), Sessions: []model.Session{s}, HostIP: "127.0.0.1"})
	if st.Phase != corev1.PodFailed || st.PodIP != "172.16.0.5" || st.HostIP != "127.0.0.1" {
		t.Fatalf("status = %+v", st)
	}
	term := st.ContainerStatuses[0].State.Terminated
	if term == nil || term.ExitCode != 3 || term.Reason != ReasonError {
		t.Fatalf("terminated = %+v", term)
	}
	s = session("main", model.SessionExited, intp(0))
	st = PodStatus(p, Observed{VM: running(), Sessions: []model.Session{s}})
	if term := st.ContainerStatuses[0].State.Terminated; term == nil || term.Reason != ReasonCompleted {
		t.Fatalf("terminated = %+v", term)
	}
	launch := model.Session{Name: "main", Status: model.SessionFailed, LaunchStage: "preflight_command", LaunchError: "nope: not found"}
	st = PodStatus(p, Observed{VM: running(), Sessions: []model.Session{launch}})
	if term := st.ContainerStatuses[0].State.Terminated; term == nil || term.Reason != ReasonStartError || term.ExitCode != 128 || !strings.Contains(term.Message, "nope") {
		t.Fatalf("terminated = %+v", term)
	}
}

func TestPodStatusNewestSessionWins(t *testing.T) {
	p := pod(ctr("main", "sh"))
	p.Spec.RestartPolicy = corev1.RestartPolicyAlways
	old := session("main", model.SessionFailed, intp(1))
	cur := session("main", model.SessionRunning, nil)
	cur.CreatedAt = old.CreatedAt.Add(time.Second)
	st := PodStatus(p, Observed{VM: running(), Sessions: []model.Session{cur, old}, Restarts: map[string]int32{"main": 2}})
	cs := st.ContainerStatuses[0]
	if cs.State.Running == nil || cs.RestartCount != 2 || st.Phase != corev1.PodRunning {
		t.Fatalf("status = %+v", st)
	}
}

func TestPodStatusFailureAndDeadline(t *testing.T) {
	p := pod(ctr("main", "sh"))
	st := PodStatus(p, Observed{Failure: &PlanError{Reason: ReasonUnknownImage, Message: `image "x" is not a banger image`}})
	if st.Phase != corev1.PodFailed || st.Reason != ReasonUnknownImage || !strings.Contains(st.Message, `"x"`) {
		t.Fatalf("status = %+v", st)
	}
	if w := st.ContainerStatuses[0].State.Waiting; w == nil || w.Reason != ReasonUnknownImage {
		t.Fatalf("container = %+v", st.ContainerStatuses[0])
	}
	// The VM's deadline stopped it (and cleared its own deadline); the
	// daemon marked the running session failed.
	deadline := int64(60)
	p.Spec.ActiveDeadlineSeconds = &deadline
	p.CreationTimestamp = metav1.NewTime(time.Unix(1700000000, 0))
	vm := &model.VM{State: model.VMStopped}
	failed := model.Session{Name: "main", Status: model.SessionFailed, Error: "vm is not running", CreatedAt: time.Unix(1700000001, 0)}
	st = PodStatus(p, Observed{VM: vm, Sessions: []model.Session{failed}, Now: time.Unix(1700000100, 0)})
	if st.Phase != corev1.PodFailed || st.Reason != ReasonDeadline {
		t.Fatalf("status = %+v", st)
	}
	// Past the deadline while the VM still runs: failed already.
	st = PodStatus(p, Observed{VM: running(), Sessions: []model.Session{session("main", model.SessionRunning, nil)}, Now: time.Unix(1700000100, 0)})
	if st.Phase != corev1.PodFailed || st.Reason != ReasonDeadline {
		t.Fatalf("status = %+v", st)
	}
	// Before it: running.
	st = PodStatus(p, Observed{VM: running(), Sessions: []model.Session{session("main", model.SessionRunning, nil)}, Now: time.Unix(1700000030, 0)})
	if st.Phase != corev1.PodRunning {
		t.Fatalf("status = %+v", st)
	}
}

func TestOrphans(t *testing.T) {
	podVM := func(uid string) model.VM {
		return model.VM{Name: "k8s-" + uid, Labels: map[string]string{LabelPodUID: uid}}
	}
	vms := []model.VM{{Name: "web"}, podVM("b"), podVM("a"), podVM("c"), {Name: "k8s-d"}}
	got := Orphans(vms, map[types.UID]bool{"b": true})
	if !reflect.DeepEqual(got, []string{"k8s-a", "k8s-c"}) {
		t.Fatalf("Orphans = %v", got)
	}
}
