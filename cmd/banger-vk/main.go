// Command banger-vk joins a banger host to a Kubernetes cluster as a node
// (virtual-kubelet): pods bound to it run as VMs of the local bangerd,
// reached over bangerd's API socket. One runs per banger host; see
// docs/kubernetes.md.
//
// This file only wires the process: flags, the Kubernetes client, TLS for
// the kubelet API, and the virtual-kubelet node. The pod logic lives in
// internal/kube (podvm: the mapping; provider: the calls). It is a binary
// of its own so banger and bangerd do not carry client-go.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/kube/provider"
	"github.com/banger/banger/internal/version"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "banger-vk:", err)
		os.Exit(1)
	}
}

type flags struct {
	kubeconfig, nodeName, nodeIP, socket string
	port                                 int
	tlsCert, tlsKey, clientCA            string
	cpus, pods                           int
	memory                               string
	workers                              int
	verbose                              bool
}

func parseFlags() (flags, error) {
	host, _ := os.Hostname()
	var f flags
	flag.StringVar(&f.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster to join (env KUBECONFIG)")
	flag.StringVar(&f.nodeName, "node-name", strings.ToLower(host), "name of the node to register")
	flag.StringVar(&f.nodeIP, "node-ip", "", "address the API server reaches this node's kubelet API at (default: the host name's first address)")
	flag.StringVar(&f.socket, "socket", "", "bangerd's API socket (default: from banger's configuration)")
	flag.IntVar(&f.port, "port", 10250, "port of the kubelet API (logs, exec, attach, port-forward, stats)")
	flag.StringVar(&f.tlsCert, "tls-cert", "", "TLS certificate of the kubelet API (default: a self-signed one made at start)")
	flag.StringVar(&f.tlsKey, "tls-key", "", "its key")
	flag.StringVar(&f.clientCA, "client-ca", "", "CA whose client certificates may call the kubelet API (the one that signed the API server's --kubelet-client-certificate); required")
	flag.IntVar(&f.cpus, "cpus", runtime.NumCPU(), "CPUs the node offers the scheduler")
	flag.StringVar(&f.memory, "memory", "", "memory the node offers, e.g. 16G (default: the host's)")
	flag.IntVar(&f.pods, "max-pods", 20, "pods the node accepts")
	flag.IntVar(&f.workers, "workers", 0, "pods created or deleted at once (default: --max-pods, so a pod's boot never waits behind another's)")
	flag.BoolVar(&f.verbose, "verbose", false, "log debug lines too: the timings of each pod's start and status pushes")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("banger-vk", version.Current().Version)
		os.Exit(0)
	}
	if f.workers == 0 {
		f.workers = max(f.pods, 1) // a bad --max-pods is refused with the capacity
	}
	if f.workers < 1 {
		return f, fmt.Errorf("--workers %d: give 1 or more", f.workers)
	}
	if f.clientCA == "" {
		return f, errors.New("--client-ca is required: without it anyone who reaches the kubelet port could exec in pods")
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return f, errors.New("--tls-cert and --tls-key go together")
	}
	if f.socket == "" {
		cfg, err := config.Load(os.Getenv)
		if err != nil {
			return f, err
		}
		cfg.Finish()
		f.socket = cfg.Socket
	}
	if f.nodeIP == "" {
		addrs, err := net.LookupHost(host)
		if err != nil || len(addrs) == 0 {
			return f, fmt.Errorf("cannot find this host's address (give --node-ip): %v", err)
		}
		f.nodeIP = addrs[0]
	}
	return f, nil
}

func run() error {
	f, err := parseFlags()
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if f.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	capa, err := nodeCapacity(f.cpus, f.memory, f.pods, hostMemoryMiB)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	b := api.NewClient(f.socket)
	if err := b.Health(ctx); err != nil {
		return fmt.Errorf("bangerd on %s: %w", f.socket, err)
	}
	client, err := nodeutil.ClientsetFromEnv(f.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %q: %w", f.kubeconfig, err)
	}
	tlsOpts := []func(*tls.Config) error{nodeutil.WithCAFromPath(f.clientCA)}
	if f.tlsCert != "" {
		tlsOpts = append(tlsOpts, nodeutil.WithKeyPairFromPath(f.tlsCert, f.tlsKey))
	} else {
		cert, err := selfSigned(f.nodeName, f.nodeIP)
		if err != nil {
			return err
		}
		tlsOpts = append(tlsOpts, func(c *tls.Config) error { c.Certificates = append(c.Certificates, cert); return nil })
	}

	spec := provider.Node(provider.NodeConfig{
		Name: f.nodeName, IP: f.nodeIP, Port: int32(f.port),
		CPUs: capa.cpus, MemoryMiB: capa.memoryMiB, Pods: capa.pods,
		Version: "banger-vk-" + version.Current().Version,
	})
	var prov *provider.Provider
	var synced cache.InformerSynced
	mux := http.NewServeMux()
	n, err := nodeutil.NewNode(f.nodeName, func(pc nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
		prov = provider.New(b, pc.Pods, f.nodeName, f.nodeIP, log)
		prov.SetRelease(func(ctx context.Context, namespace, name string, uid types.UID) error {
			zero := int64(0)
			err := client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{
				GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid}})
			if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
				return nil // gone, or another pod of that name now
			}
			return err
		})
		return prov, provider.NewHealth(b, pc.Node, 10*time.Second), nil
	},
		nodeutil.WithClient(client),
		func(c *nodeutil.NodeConfig) error {
			c.NodeSpec = spec
			c.HTTPListenAddr = net.JoinHostPort(f.nodeIP, strconv.Itoa(f.port))
			c.NumWorkers = f.workers
			c.Handler = mux
			// The kubelet's default: an idle kubectl exec -it or
			// port-forward stays open.
			c.StreamIdleTimeout = 4 * time.Hour
			return nil
		},
		nodeutil.AttachProviderRoutes(mux),
		nodeutil.WithTLSConfig(tlsOpts...),
		nodeutil.WithPodControllerConfigOverrides(func(pc *node.PodControllerConfig) error {
			synced = pc.PodInformer.Informer().HasSynced
			return nil
		}),
	)
	if err != nil {
		return err
	}
	// Take back the pods this node ran before the pod controller starts
	// asking: no VM is made twice, none is left behind.
	adoptDone := make(chan error, 1)
	go func() {
		if !cache.WaitForCacheSync(ctx.Done(), synced) {
			adoptDone <- ctx.Err()
			return
		}
		adoptDone <- prov.Adopt(ctx)
	}()
	errc := make(chan error, 1)
	go func() { errc <- n.Run(ctx) }()
	if err := <-adoptDone; err != nil {
		log.Error("adopting pod vms", "err", err)
	}
	if err := n.WaitReady(ctx, 2*time.Minute); err != nil {
		return fmt.Errorf("node %s not ready: %w", f.nodeName, err)
	}
	log.Info("node ready", "node", f.nodeName, "kubelet_api", net.JoinHostPort(f.nodeIP, strconv.Itoa(f.port)), "bangerd", f.socket)
	err = <-errc
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// selfSigned makes the kubelet API's certificate when none is given.
func selfSigned(name, ip string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{name},
	}
	if a := net.ParseIP(ip); a != nil {
		tmpl.IPAddresses = []net.IP{a}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
