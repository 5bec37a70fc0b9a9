// Package podvm maps Kubernetes pods onto banger VMs and back, as pure
// functions: the VM a pod gets (its name from the pod UID, image, CPUs,
// memory, deadline), the guest session each container runs as, the pod
// status its VM and sessions stand for, when a finished container
// restarts, which VMs are orphans, and the statistics a guest's sample
// stands for (stats.go: bounded, since the guest writes it). banger-vk
// (internal/kube/provider) does the I/O around it.
//
// It must do no I/O and must not talk to bangerd or the Kubernetes API;
// every rule about what a pod may ask for lives here, so it is tested as
// plain functions (docs/kubernetes.md lists the rules).
package podvm

import (
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
)

// TaintKey is the taint every banger node carries (NoSchedule): only
// pods that tolerate it are placed on banger hosts.
const TaintKey = "banger.dev/vm"

// VMPrefix starts the name of every VM that runs a pod; the rest is the
// pod's UID. VMs with other names are never touched by banger-vk.
const VMPrefix = "k8s-"

// Reasons a pod or container status carries.
const (
	ReasonUnknownImage  = "UnknownImage"       // the image names no banger image
	ReasonUnsupported   = "UnsupportedPodSpec" // the pod asks for what banger cannot give
	ReasonCreating      = "ContainerCreating"
	ReasonCompleted     = "Completed"
	ReasonError         = "Error"
	ReasonStartError    = "StartError"
	ReasonStopped       = "Stopped"
	ReasonVMGone        = "VMNotRunning"
	ReasonDeadline      = "DeadlineExceeded"
	startErrorExitCode  = 128
	maxDeadline         = 30 * 24 * time.Hour // banger's longest VM deadline
	defaultStopExitCode = 143                 // a session stopped by TERM
)

// ---- names ----

// VMName is the VM a pod runs in: VMPrefix and the pod's UID. The UID is
// the idempotency key: a pod never gets a second VM.
func VMName(uid types.UID) (string, error) {
	name := VMPrefix + strings.ToLower(string(uid))
	if err := model.ValidateName("vm", name); err != nil {
		return "", fmt.Errorf("pod uid %q cannot name a VM: %w", uid, err)
	}
	return name, nil
}

// Labels every pod VM carries: which pod it runs. They make pod VMs
// visible (`banger vm list -l banger.dev/pod-namespace=default`) and tell
// them apart from the user's own VMs, whatever those are named.
const (
	LabelPodUID       = "banger.dev/pod-uid"
	LabelPodNamespace = "banger.dev/pod-namespace"
	LabelPodName      = "banger.dev/pod-name"
)

// PodLabels are the labels of the VM that runs pod.
func PodLabels(pod *corev1.Pod) map[string]string {
	return map[string]string{
		LabelPodUID:       string(pod.UID),
		LabelPodNamespace: pod.Namespace,
		LabelPodName:      pod.Name,
	}
}

// UIDOf is the pod UID a VM runs, and false for VMs that run no pod: a
// pod VM carries the pod-uid label and the name VMName gives that UID.
// A VM only named like one (the user's "k8s-test") is not a pod VM.
func UIDOf(vm model.VM) (types.UID, bool) {
	uid := types.UID(vm.Labels[LabelPodUID])
	if uid == "" {
		return "", false
	}
	if name, err := VMName(uid); err != nil || name != vm.Name {
		return "", false
	}
	return uid, true
}

// ---- pod → VM ----

// Plan is what a pod becomes: one VM and one session per container, in
// the pod's container order.
type Plan struct {
	VM       api.CreateVMRequest
	Sessions []api.StartSessionRequest
}

// PlanError is a pod banger cannot run, whatever happens later: the pod
// fails with Reason and the message, it is not retried.
type PlanError struct {
	Reason  string
	Message string
}

func (e *PlanError) Error() string { return e.Message }

func unsupported(format string, a ...any) error {
	return &PlanError{Reason: ReasonUnsupported, Message: fmt.Sprintf(format, a...)}
}

// PlanPod maps a pod onto a VM and its sessions. Every container must
// name the same banger image (they share the VM) and give a command (a
// banger image has no entrypoint). CPUs are the containers' limits (else
// requests) added up and rounded up, memory likewise in MiB; none given
// leaves bangerd's defaults. activeDeadlineSeconds becomes the VM's
// deadline (stop, so the pod's logs stay readable). Anything else the
// pod asks for that banger cannot honour is a *PlanError naming it.
func PlanPod(pod *corev1.Pod) (Plan, error) {
	name, err := VMName(pod.UID)
	if err != nil {
		return Plan{}, unsupported("%v", err)
	}
	spec := &pod.Spec
	if len(spec.Containers) == 0 {
		return Plan{}, unsupported("pod has no containers")
	}
	if len(spec.InitContainers) > 0 {
		return Plan{}, unsupported("init containers are not supported on banger nodes")
	}
	if len(spec.EphemeralContainers) > 0 {
		return Plan{}, unsupported("ephemeral containers are not supported on banger nodes")
	}
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		return Plan{}, unsupported("host namespaces (hostNetwork, hostPID, hostIPC) are not supported: a pod runs in its own VM")
	}
	if err := checkVolumes(spec.Volumes); err != nil {
		return Plan{}, err
	}
	image := spec.Containers[0].Image
	var cpuMilli, memBytes int64
	plan := Plan{}
	for _, c := range spec.Containers {
		if c.Image != image {
			return Plan{}, unsupported("containers %q and %q name different images (%q, %q): a pod's containers share one VM, so one banger image", spec.Containers[0].Name, c.Name, image, c.Image)
		}
		s, err := planSession(c)
		if err != nil {
			return Plan{}, err
		}
		plan.Sessions = append(plan.Sessions, s)
		cpu, mem := containerResources(c)
		cpuMilli += cpu.MilliValue()
		memBytes += mem.Value()
	}
	if err := model.ValidateName("image", image); err != nil {
		return Plan{}, &PlanError{Reason: ReasonUnknownImage, Message: fmt.Sprintf("image %q is not a banger image name (a banger image is named like \"default\"; see banger image list): %v", image, err)}
	}
	plan.VM = api.CreateVMRequest{Name: name, Image: image, Start: true, Labels: PodLabels(pod)}
	if cpuMilli > 0 {
		plan.VM.CPUs = int((cpuMilli + 999) / 1000)
	}
	if memBytes > 0 {
		plan.VM.Memory = fmt.Sprintf("%dM", (memBytes+(1<<20)-1)>>20)
	}
	if d := spec.ActiveDeadlineSeconds; d != nil {
		dur := time.Duration(*d) * time.Second
		if *d < 1 || dur > maxDeadline {
			return Plan{}, unsupported("activeDeadlineSeconds %d is out of range: banger VM deadlines are 1s to 30d", *d)
		}
		plan.VM.TTL = fmt.Sprintf("%ds", *d)
		plan.VM.TTLAction = model.TTLStop
	}
	return plan, nil
}

// checkVolumes refuses volumes banger cannot provide; the service-account
// token volume the API server adds is tolerated (the token is not put in
// the guest: docs/kubernetes.md).
func checkVolumes(vols []corev1.Volume) error {
	for _, v := range vols {
		if v.Projected != nil && strings.HasPrefix(v.Name, "kube-api-access-") {
			continue
		}
		return unsupported("volume %q is not supported on banger nodes (only the service-account token volume is tolerated, and not mounted)", v.Name)
	}
	return nil
}

// containerResources is what a container asks for: its limits, else its
// requests.
func containerResources(c corev1.Container) (cpu, mem resource.Quantity) {
	pick := func(n corev1.ResourceName) resource.Quantity {
		if q, ok := c.Resources.Limits[n]; ok {
			return q
		}
		return c.Resources.Requests[n]
	}
	return pick(corev1.ResourceCPU), pick(corev1.ResourceMemory)
}

// planSession maps a container onto a guest session named like it.
func planSession(c corev1.Container) (api.StartSessionRequest, error) {
	argv := append(append([]string{}, c.Command...), c.Args...)
	if len(argv) == 0 {
		return api.StartSessionRequest{}, unsupported("container %q has no command or args: a banger image has no entrypoint, so give the command to run", c.Name)
	}
	if err := model.ValidateName("session", c.Name); err != nil {
		return api.StartSessionRequest{}, unsupported("container %q: %v", c.Name, err)
	}
	if len(c.VolumeMounts) > 0 {
		for _, m := range c.VolumeMounts {
			if !strings.HasPrefix(m.Name, "kube-api-access-") {
				return api.StartSessionRequest{}, unsupported("container %q mounts volume %q, which banger nodes do not provide", c.Name, m.Name)
			}
		}
	}
	var env map[string]string
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			return api.StartSessionRequest{}, unsupported("container %q: env %s has a valueFrom that was not resolved", c.Name, e.Name)
		}
		if env == nil {
			env = map[string]string{}
		}
		env[e.Name] = e.Value
	}
	req := api.StartSessionRequest{
		Name:    c.Name,
		Command: argv[0],
		Args:    argv[1:],
		Env:     env,
		Cwd:     c.WorkingDir,
		Stdin:   model.StdinClosed,
	}
	// stdin: the session's stdin is a pipe kubectl attach -i writes to
	// (it stays open across attachments: stdinOnce is not honoured); tty:
	// the command runs on a guest terminal, which needs that pipe.
	if c.Stdin || c.TTY {
		req.Stdin = model.StdinPipe
	}
	req.TTY = c.TTY
	return req, nil
}

// ---- restarts ----

// ShouldRestart says whether a finished container restarts under the
// pod's policy: Always restarts any end, OnFailure a non-zero one, Never
// none.
func ShouldRestart(policy corev1.RestartPolicy, exitCode int) bool {
	switch policy {
	case corev1.RestartPolicyAlways, "":
		return true
	case corev1.RestartPolicyOnFailure:
		return exitCode != 0
	}
	return false
}

// Finished says whether a session has ended, and its exit code (the code
// a container status reports: 128 for a launch that failed, 143 for a
// stop without a recorded code).
func Finished(s model.Session) (bool, int) {
	switch s.Status {
	case model.SessionExited, model.SessionFailed, model.SessionStopped:
	default:
		return false, 0
	}
	switch {
	case s.ExitCode != nil:
		return true, *s.ExitCode
	case s.LaunchStage != "":
		return true, startErrorExitCode
	case s.Status == model.SessionStopped:
		return true, defaultStopExitCode
	case s.Status == model.SessionExited:
		return true, 0
	}
	return true, 1
}

// ---- VM and sessions → pod status ----

// Observed is what banger-vk knows of a pod's VM: the VM record (nil when
// there is none), its sessions, and how often each container restarted.
type Observed struct {
	VM       *model.VM
	Sessions []model.Session
	Restarts map[string]int32
	HostIP   string    // the node's address
	Now      time.Time // for activeDeadlineSeconds; zero: not checked
	// Failure is a pod that cannot run (a *PlanError from PlanPod): the
	// pod is Failed with its reason.
	Failure *PlanError
}

// PodStatus is the status a pod reports: its phase from the sessions
// (every container running: Running; all finished without restart due:
// Succeeded when every exit code is 0, else Failed), its IP from the VM,
// and one container status per container of the spec, in spec order.
func PodStatus(pod *corev1.Pod, o Observed) corev1.PodStatus {
	st := corev1.PodStatus{
		Phase:    corev1.PodPending,
		HostIP:   o.HostIP,
		QOSClass: pod.Status.QOSClass,
	}
	if o.HostIP != "" {
		st.HostIPs = []corev1.HostIP{{IP: o.HostIP}}
	}
	start := pod.CreationTimestamp
	if pod.Status.StartTime != nil {
		start = *pod.Status.StartTime
	}
	st.StartTime = &start
	if o.Failure != nil {
		st.Phase = corev1.PodFailed
		st.Reason = o.Failure.Reason
		st.Message = o.Failure.Message
		for _, c := range pod.Spec.Containers {
			st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
				Name: c.Name, Image: c.Image,
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: o.Failure.Reason, Message: o.Failure.Message}},
			})
		}
		st.Conditions = conditions(false, start)
		return st
	}
	byName := map[string]model.Session{}
	for _, s := range o.Sessions {
		if prev, ok := byName[s.Name]; !ok || s.CreatedAt.After(prev.CreatedAt) {
			byName[s.Name] = s
		}
	}
	vmRunning := o.VM != nil && o.VM.State == model.VMRunning
	if o.VM != nil && o.VM.GuestIP != "" {
		st.PodIP = o.VM.GuestIP
		st.PodIPs = []corev1.PodIP{{IP: o.VM.GuestIP}}
	}
	running, succeeded, failed, waiting := 0, 0, 0, 0
	for _, c := range pod.Spec.Containers {
		cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: c.Image, RestartCount: o.Restarts[c.Name]}
		s, ok := byName[c.Name]
		done, code := false, 0
		if ok {
			done, code = Finished(s)
		}
		switch {
		case ok && done:
			t := &corev1.ContainerStateTerminated{ExitCode: int32(code), Reason: terminatedReason(s, code), Message: terminatedMessage(s)}
			if s.StartedAt != nil {
				t.StartedAt = metav1.NewTime(*s.StartedAt)
			}
			if s.EndedAt != nil {
				t.FinishedAt = metav1.NewTime(*s.EndedAt)
			}
			cs.State.Terminated = t
			if code == 0 {
				succeeded++
			} else {
				failed++
			}
			if ShouldRestart(pod.Spec.RestartPolicy, code) {
				waiting++ // a restart is due: the pod is not finished
			}
		case ok && s.Status == model.SessionRunning && vmRunning:
			r := &corev1.ContainerStateRunning{}
			if s.StartedAt != nil {
				r.StartedAt = metav1.NewTime(*s.StartedAt)
			}
			cs.State.Running = r
			cs.Ready = true
			started := true
			cs.Started = &started
			running++
		default:
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: ReasonCreating}
			waiting++
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	n := len(pod.Spec.Containers)
	vmDown := o.VM != nil && (o.VM.State == model.VMStopped || o.VM.State == model.VMStopping || o.VM.State == model.VMFailed)
	switch {
	case waiting == 0 && succeeded+failed == n:
		st.Phase = corev1.PodSucceeded
		if failed > 0 {
			st.Phase = corev1.PodFailed
		}
	case vmDown:
		// The VM went away under containers that had not finished.
		st.Phase = corev1.PodFailed
		st.Reason, st.Message = ReasonVMGone, "the pod's VM is not running"
		if deadlinePassed(pod, start, o.Now) {
			st.Reason, st.Message = ReasonDeadline, "the pod passed its activeDeadlineSeconds"
		}
	case running == n:
		st.Phase = corev1.PodRunning
	case running > 0 || (succeeded+failed > 0 && vmRunning):
		st.Phase = corev1.PodRunning
	}
	if st.Phase == corev1.PodFailed && vmDown && deadlinePassed(pod, start, o.Now) {
		st.Reason, st.Message = ReasonDeadline, "the pod passed its activeDeadlineSeconds"
	}
	if st.Phase == corev1.PodRunning && deadlinePassed(pod, start, o.Now) {
		st.Phase = corev1.PodFailed
		st.Reason, st.Message = ReasonDeadline, "the pod passed its activeDeadlineSeconds"
	}
	st.Conditions = conditions(running == n && vmRunning, start)
	return st
}

// deadlinePassed says whether the pod ran past its activeDeadlineSeconds,
// counted from its start (the VM's own deadline, a little later, stops it;
// a stop clears the VM's deadline, so the pod's is the one to read).
func deadlinePassed(pod *corev1.Pod, start metav1.Time, now time.Time) bool {
	d := pod.Spec.ActiveDeadlineSeconds
	return d != nil && !now.IsZero() && !now.Before(start.Add(time.Duration(*d)*time.Second))
}

func terminatedReason(s model.Session, code int) string {
	switch {
	case s.LaunchStage != "":
		return ReasonStartError
	case s.Status == model.SessionStopped:
		return ReasonStopped
	case code == 0:
		return ReasonCompleted
	}
	return ReasonError
}

func terminatedMessage(s model.Session) string {
	if s.LaunchError != "" {
		return fmt.Sprintf("%s: %s", s.LaunchStage, s.LaunchError)
	}
	return s.Error
}

func conditions(ready bool, since metav1.Time) []corev1.PodCondition {
	b := func(v bool) corev1.ConditionStatus {
		if v {
			return corev1.ConditionTrue
		}
		return corev1.ConditionFalse
	}
	return []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: since},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: since},
		{Type: corev1.ContainersReady, Status: b(ready), LastTransitionTime: since},
		{Type: corev1.PodReady, Status: b(ready), LastTransitionTime: since},
	}
}

// ---- restarts of banger-vk ----

// Orphans are the pod VMs (by name, sorted) whose pod UID is not among
// live: their pod was deleted while banger-vk was away.
func Orphans(vms []model.VM, live map[types.UID]bool) []string {
	var out []string
	for _, vm := range vms {
		if uid, ok := UIDOf(vm); ok && !live[uid] {
			out = append(out, vm.Name)
		}
	}
	sort.Strings(out)
	return out
}
