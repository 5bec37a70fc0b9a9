package provider

import (
	"context"
	"sort"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/kube/podvm"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/tail"
)

// Statistics: each running pod VM's guest is sampled through bangerd's
// exec (podvm.StatsScript) when the summary or the resource metrics are
// asked for; the samples are checked against the VM (podvm.ParseStats)
// and the CPU rate comes from the previous sample of the same VM.

// statsTimeout bounds sampling one VM; statsParallel how many are
// sampled at once.
const (
	statsTimeout  = 10 * time.Second
	statsParallel = 4
)

// GetStatsSummary is the kubelet's stats summary of the node's running
// pods (kubectl get --raw /api/v1/nodes/NODE/proxy/stats/summary). A pod
// whose guest could not be sampled is left out (and logged).
func (p *Provider) GetStatsSummary(ctx context.Context) (*statsv1alpha1.Summary, error) {
	usage := p.sample(ctx)
	return podvm.Summary(p.nodeName, p.started, p.now(), usage), nil
}

// GetMetricsResource is the kubelet's resource metrics (what
// metrics-server scrapes for kubectl top) of the node's running pods.
func (p *Provider) GetMetricsResource(ctx context.Context) ([]*dto.MetricFamily, error) {
	return podvm.MetricFamilies(p.now(), p.sample(ctx)), nil
}

// sample takes one sample of every running pod VM, in pod order.
func (p *Provider) sample(ctx context.Context) []podvm.PodUsage {
	p.mu.Lock()
	type target struct {
		e   *entry
		key string
	}
	var targets []target
	for k, e := range p.run {
		if e.vm != "" && e.failure == nil && !e.creating && !e.stopping {
			targets = append(targets, target{e, k})
		}
	}
	p.mu.Unlock()
	sort.Slice(targets, func(i, j int) bool { return targets[i].key < targets[j].key })
	out := make([]*podvm.PodUsage, len(targets))
	sem := make(chan struct{}, statsParallel)
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i] = p.sampleOne(ctx, t.e)
		}()
	}
	wg.Wait()
	var usage []podvm.PodUsage
	for _, u := range out {
		if u != nil {
			usage = append(usage, *u)
		}
	}
	return usage
}

// sampleOne samples one pod VM's guest, or answers nil when it does not
// run or its answer is refused.
func (p *Provider) sampleOne(ctx context.Context, e *entry) *podvm.PodUsage {
	ctx, cancel := context.WithTimeout(ctx, statsTimeout)
	defer cancel()
	vm, err := p.b.GetVM(ctx, e.vm)
	if err != nil || vm.State != model.VMRunning {
		return nil
	}
	out := &tail.Buffer{Max: podvm.MaxStatsOutput + 1}
	code, err := p.b.ExecVM(ctx, e.vm, api.ExecRequest{Command: []string{"sh", "-c", podvm.StatsScript}}, out, &tail.Buffer{Max: 1024})
	if err != nil || code != 0 {
		p.log.Debug("sample pod vm", "vm", e.vm, "exit", code, "err", err)
		return nil
	}
	g, err := podvm.ParseStats(string(out.Bytes()), vm, p.now())
	if err != nil {
		p.log.Warn("pod vm stats refused", "vm", e.vm, "err", err)
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	u := &podvm.PodUsage{Pod: e.pod.DeepCopy(), Stats: g}
	if rate, ok := podvm.CPURate(e.lastStats, g, vm.CPUs); ok {
		u.NanoCores = &rate
	}
	e.lastStats = g
	return u
}
