package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/banger/banger/internal/proc"
	"github.com/banger/banger/internal/vmm"
)

// qmpFdset is one entry of query-fdsets.
type qmpFdset struct {
	ID  int `json:"fdset-id"`
	FDs []struct {
		FD     int    `json:"fd"`
		Opaque string `json:"opaque"`
	} `json:"fds"`
}

// dropWritable removes the read-write descriptor of every fdset (those
// DescriptorDisks and Overlay add, marked fdWritable). The block nodes
// keep their own copies, so the disks stay writable; what goes is a
// spare that would let QEMU write a file again after a node reopened it
// read-only. QEMU closes a removed descriptor only while the guest runs,
// so this is called once it does.
func dropWritable(c *qmp) error {
	return c.removeFDs(context.Background(), fdWritable)
}

// fdsets is QEMU's query-fdsets.
func (c *qmp) fdsets(ctx context.Context) ([]qmpFdset, error) {
	var sets []qmpFdset
	err := c.execute(ctx, "query-fdsets", nil, &sets)
	return sets, err
}

// fdsetOf returns the id of the fdset holding a descriptor added with
// opaque, ok false when none does.
func (c *qmp) fdsetOf(ctx context.Context, opaque string) (int, bool, error) {
	sets, err := c.fdsets(ctx)
	if err != nil {
		return 0, false, err
	}
	for _, s := range sets {
		for _, f := range s.FDs {
			if f.Opaque == opaque {
				return s.ID, true, nil
			}
		}
	}
	return 0, false, nil
}

// removeFDs removes every descriptor, of any fdset, added with opaque.
func (c *qmp) removeFDs(ctx context.Context, opaque string) error {
	sets, err := c.fdsets(ctx)
	if err != nil {
		return err
	}
	for _, s := range sets {
		for _, f := range s.FDs {
			if f.Opaque != opaque {
				continue
			}
			if err := c.execute(ctx, "remove-fd", map[string]any{"fdset-id": s.ID, "fd": f.FD}, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// blockInfo is the part of a query-block entry Overlay and Stream read.
type blockInfo struct {
	Device   string `json:"device"`
	Inserted *struct {
		NodeName    string `json:"node-name"`
		Drv         string `json:"drv"`
		File        string `json:"file"`
		BackingFile string `json:"backing_file"`
	} `json:"inserted"`
}

// top returns the disk diskID's current top node as query-block shows it.
func (c *qmp) top(ctx context.Context, diskID string) (blockInfo, error) {
	var blocks []blockInfo
	if err := c.execute(ctx, "query-block", nil, &blocks); err != nil {
		return blockInfo{}, err
	}
	for _, b := range blocks {
		if b.Device == diskID && b.Inserted != nil {
			return b, nil
		}
	}
	return blockInfo{}, fmt.Errorf("qemu has no disk %q", diskID)
}

// namedNode is the part of a query-named-block-nodes entry read here.
type namedNode struct {
	NodeName string `json:"node-name"`
	Driver   string `json:"drv"`
	File     string `json:"file"`
	RO       bool   `json:"ro"`
}

func (c *qmp) nodes(ctx context.Context) ([]namedNode, error) {
	var ns []namedNode
	err := c.execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &ns)
	return ns, err
}

// Overlay implements vmm.Overlayer: the file goes in as a new fdset
// (read-write and read-only descriptors, QMP add-fd), becomes a node
// (blockdev-add, with no backing) and is put on top of the disk's node
// (blockdev-snapshot). QEMU then reopens the former top read-only, which
// it can do only through the former top's fdset: the disk must have been
// opened by descriptor (DescriptorDisks) and its read-write descriptor
// dropped (dropWritable, once the guest ran).
func (d *Driver) Overlay(ctx context.Context, h vmm.Handle, diskID, path string) error {
	rw, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("overlay for disk %s: %w", diskID, err)
	}
	defer rw.Close()
	ro, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("overlay for disk %s: %w", diskID, err)
	}
	defer ro.Close()
	return withQMP(ctx, h.APISocket, func(c *qmp) error {
		var st qmpStatus
		if err := c.execute(ctx, "query-status", nil, &st); err != nil {
			return err
		}
		if st.Running {
			return fmt.Errorf("%w: the guest runs", vmm.ErrNoOverlay)
		}
		top, err := c.top(ctx, diskID)
		if err != nil {
			return err
		}
		if err := c.canReopenReadOnly(ctx, protocolFile(top.Inserted.File)); err != nil {
			return fmt.Errorf("%w: disk %s: %v", vmm.ErrNoOverlay, diskID, err)
		}
		var added struct {
			Set int `json:"fdset-id"`
		}
		if err := c.executeFD(ctx, "add-fd", map[string]any{"opaque": fdWritable}, rw, &added); err != nil {
			return err
		}
		undo := func(err error) error {
			_ = c.execute(ctx, "remove-fd", map[string]any{"fdset-id": added.Set}, nil)
			return err
		}
		if err := c.executeFD(ctx, "add-fd", map[string]any{"fdset-id": added.Set, "opaque": fdReadOnly}, ro, nil); err != nil {
			return undo(err)
		}
		node, err := overlayNodeName()
		if err != nil {
			return undo(err)
		}
		if err := c.execute(ctx, "blockdev-add", map[string]any{
			"driver": "qcow2", "node-name": node, "backing": nil,
			"file": map[string]any{"driver": "file", "filename": fdsetPath(added.Set), "auto-read-only": false, "locking": "off"},
		}, nil); err != nil {
			return undo(err)
		}
		if err := c.execute(ctx, "blockdev-snapshot", map[string]any{"node": top.Inserted.NodeName, "overlay": node}, nil); err != nil {
			_ = c.execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
			return undo(err)
		}
		// QEMU reopens the former top read-only after the switch and says
		// nothing when it cannot: check it did.
		ns, err := c.nodes(ctx)
		if err != nil {
			return fmt.Errorf("%w: %v", vmm.ErrOverlaid, err)
		}
		for _, n := range ns {
			if n.NodeName == top.Inserted.NodeName && !n.RO {
				return fmt.Errorf("%w, but qemu still holds its former file writable", vmm.ErrOverlaid)
			}
		}
		return nil
	})
}

// protocolFile is the file a node reads, from query-block's name for it:
// a node whose backing was set after it was opened (an Overlay's) is
// named by its options ("json:{…}"), the file's name under "file".
func protocolFile(name string) string {
	js, ok := strings.CutPrefix(name, "json:")
	if !ok {
		return name
	}
	var o struct {
		File struct {
			Filename string `json:"filename"`
		} `json:"file"`
	}
	if json.Unmarshal([]byte(js), &o) != nil {
		return name
	}
	return o.File.Filename
}

// canReopenReadOnly checks that a node opened from file (query-block's
// name) can be reopened read-only without a path: file is an fdset's
// name and the fdset holds a read-only descriptor and no read-write one.
func (c *qmp) canReopenReadOnly(ctx context.Context, file string) error {
	n, ok := strings.CutPrefix(file, "/dev/fdset/")
	set, err := strconv.Atoi(n)
	if !ok || err != nil {
		return fmt.Errorf("qemu opened it by path (%s), not by descriptor", file)
	}
	sets, err := c.fdsets(ctx)
	if err != nil {
		return err
	}
	for _, s := range sets {
		if s.ID != set {
			continue
		}
		var hasRO bool
		for _, f := range s.FDs {
			switch f.Opaque {
			case fdWritable:
				return fmt.Errorf("qemu still holds a spare writable descriptor of it")
			case fdReadOnly:
				hasRO = true
			}
		}
		if !hasRO {
			return fmt.Errorf("its fdset %d has no read-only descriptor", set)
		}
		return nil
	}
	return fmt.Errorf("its fdset %d is gone", set)
}

func overlayNodeName() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "ovl-" + hex.EncodeToString(b[:]), nil
}

// underUnder returns the node two steps down node's backing chain: the
// backing of the file under node. The nodes an Overlay made, and the
// ones they cover, go by their fdsets' names (and QEMU reports their
// backing files by those names, not by what their headers say), so the
// chain is walked on QEMU's block graph (x-debug-query-block-graph,
// QEMU's only answer that names the nodes' children).
func (c *qmp) underUnder(ctx context.Context, node string) (string, error) {
	var g struct {
		Nodes []struct {
			ID   int    `json:"id"`
			Name string `json:"name"`
		} `json:"nodes"`
		Edges []struct {
			Parent int    `json:"parent"`
			Child  int    `json:"child"`
			Name   string `json:"name"`
		} `json:"edges"`
	}
	if err := c.execute(ctx, "x-debug-query-block-graph", nil, &g); err != nil {
		return "", err
	}
	ids, names := map[string]int{}, map[int]string{}
	for _, n := range g.Nodes {
		ids[n.Name], names[n.ID] = n.ID, n.Name
	}
	backing := map[int]int{}
	for _, e := range g.Edges {
		if e.Name == "backing" {
			backing[e.Parent] = e.Child
		}
	}
	id, ok := ids[node]
	for i := 0; ok && i < 2; i++ {
		id, ok = backing[id]
	}
	if !ok {
		return "", fmt.Errorf("the chain under %s is not two files deep", node)
	}
	return names[id], nil
}

// streamPoll is how often Stream asks QEMU how its copy goes.
const streamPoll = 100 * time.Millisecond

// qmpJob is one entry of query-jobs.
type qmpJob struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Error  string `json:"error"`
}

// Stream implements vmm.Overlayer with a block-stream job whose base is
// the node under the file under the top, named
// after the disk so that a second Stream finds the first's job. The job
// outlives the QMP connection (auto-dismiss off: its outcome waits to be
// read); Stream connects briefly per poll, since QEMU serves one QMP
// client at a time and a copy can take minutes.
func (d *Driver) Stream(ctx context.Context, h vmm.Handle, diskID, basePath string) error {
	job := "stream-" + diskID
	start := func(c *qmp) error {
		top, err := c.top(ctx, diskID)
		if err != nil {
			return err
		}
		var jobs []qmpJob
		if err := c.execute(ctx, "query-jobs", nil, &jobs); err != nil {
			return err
		}
		for _, j := range jobs {
			if j.ID == job {
				return nil // a Stream before this one started it
			}
		}
		base, err := c.underUnder(ctx, top.Inserted.NodeName)
		if err != nil {
			return err
		}
		return c.execute(ctx, "block-stream", map[string]any{
			"job-id": job, "device": diskID, "base-node": base, "backing-file": basePath, "auto-dismiss": false,
		}, nil)
	}
	if err := withQMP(ctx, h.APISocket, start); err != nil {
		return fmt.Errorf("stream disk %s: %w", diskID, err)
	}
	if err := awaitJob(ctx, h.APISocket, job); err != nil {
		return fmt.Errorf("stream disk %s: %w", diskID, err)
	}
	return nil
}

// errJobGone: the job awaited is not in QEMU (a VMM that restarted).
var errJobGone = errors.New("its job is gone (the VMM restarted?)")

// awaitJob polls QEMU (a fresh QMP connection each streamPoll: QEMU serves
// one client at a time, and a job can take minutes) until the job, made
// with auto-dismiss off, concludes, and dismisses it. It returns the
// job's error, errJobGone, or the error that ended the wait (ctx, QMP),
// the job then left as it is.
func awaitJob(ctx context.Context, socket, job string) error {
	return pollJob(ctx, socket, job, false)
}

// awaitReady is awaitJob that also returns, nil, once the job is ready
// to complete (a mirror); a job that concludes first is an error.
func awaitReady(ctx context.Context, socket, job string) error {
	return pollJob(ctx, socket, job, true)
}

func pollJob(ctx context.Context, socket, job string, untilReady bool) error {
	for {
		var outcome error
		var finished bool
		err := withQMP(ctx, socket, func(c *qmp) error {
			var jobs []qmpJob
			if err := c.execute(ctx, "query-jobs", nil, &jobs); err != nil {
				return err
			}
			for _, j := range jobs {
				if j.ID != job {
					continue
				}
				switch {
				case untilReady && j.Status == "ready":
					finished = true
					return nil
				case j.Status != "concluded":
					return nil
				}
				finished = true
				if j.Error != "" {
					outcome = errors.New(j.Error)
				} else if untilReady {
					outcome = errors.New("the copy ended before it was ready")
				}
				return c.execute(ctx, "job-dismiss", map[string]any{"id": job}, nil)
			}
			finished, outcome = true, errJobGone
			return nil
		})
		if err != nil {
			return err
		}
		if finished {
			return outcome
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(streamPoll):
		}
	}
}

// backupOpaque marks the fdset of a backup's target, by job.
const backupOpaque = "backup:"

// StartBackup implements vmm.Overlayer: the target goes in by descriptor
// (add-fd), becomes a raw node (blockdev-add) and a blockdev-backup job
// (sync full, named after the node) copies the disk into it. QEMU
// refuses to complete a migration while a backup runs, so it starts
// after Save, on the stopped guest; the job runs once the guest does,
// copying before the guest overwrites anything the instant's data.
func (d *Driver) StartBackup(ctx context.Context, h vmm.Handle, diskID, path string) (string, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("backup of disk %s: %w", diskID, err)
	}
	defer f.Close()
	node, err := copyNodeName("bk")
	if err != nil {
		return "", err
	}
	err = withQMP(ctx, h.APISocket, func(c *qmp) error {
		var st qmpStatus
		if err := c.execute(ctx, "query-status", nil, &st); err != nil {
			return err
		}
		if st.Running {
			return fmt.Errorf("%w: the guest runs", vmm.ErrNoOverlay)
		}
		var speed map[string]any
		if d.backupSpeed > 0 {
			speed = map[string]any{"speed": d.backupSpeed}
		}
		return c.startCopy(ctx, f, node, backupOpaque, false, "blockdev-backup", diskID, speed)
	})
	if err != nil {
		return "", fmt.Errorf("backup of disk %s: %w", diskID, err)
	}
	return node, nil
}

// copyNodeName is a new node name for a copy job's target, prefix-xxxx
// (the job is named after it).
func copyNodeName(prefix string) (string, error) {
	node, err := overlayNodeName()
	return prefix + strings.TrimPrefix(node, "ovl"), err
}

// startCopy puts the file f into QEMU as the raw node node (its fdset
// marked opaque+node; discard=unmap when unmap, so what reads as zeroes
// stays a hole) and starts the job cmd (blockdev-backup or
// blockdev-mirror, sync full, named node, not dismissed on its own)
// copying the disk diskID into it, with extra arguments. When the job
// cannot start, the node and its descriptor are taken out again.
func (c *qmp) startCopy(ctx context.Context, f *os.File, node, opaque string, unmap bool, cmd, diskID string, extra map[string]any) error {
	var added struct {
		Set int `json:"fdset-id"`
	}
	if err := c.executeFD(ctx, "add-fd", map[string]any{"opaque": opaque + node}, f, &added); err != nil {
		return err
	}
	target := map[string]any{
		"driver": "raw", "node-name": node,
		"file": map[string]any{"driver": "file", "filename": fdsetPath(added.Set), "locking": "off"},
	}
	if unmap {
		target["discard"] = "unmap"
	}
	if err := c.execute(ctx, "blockdev-add", target, nil); err != nil {
		_ = c.execute(ctx, "remove-fd", map[string]any{"fdset-id": added.Set}, nil)
		return err
	}
	args := map[string]any{"job-id": node, "device": diskID, "target": node, "sync": "full", "auto-dismiss": false}
	maps.Copy(args, extra)
	if err := c.execute(ctx, cmd, args, nil); err != nil {
		_ = c.execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
		_ = c.execute(ctx, "remove-fd", map[string]any{"fdset-id": added.Set}, nil)
		return err
	}
	return nil
}

// WaitBackup implements vmm.Overlayer: it waits for the job (awaitJob),
// then takes its target out of QEMU (job-dismiss, blockdev-del,
// remove-fd), also when the job failed or ctx ended (the job cancelled).
func (d *Driver) WaitBackup(ctx context.Context, h vmm.Handle, job string) error {
	outcome := awaitJob(ctx, h.APISocket, job)
	// Taken out whatever happened, with a context of its own: the
	// target must not stay open in QEMU.
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cerr := withQMP(cctx, h.APISocket, func(c *qmp) error {
		return c.dropBackup(cctx, job, backupOpaque, outcome != nil && !errors.Is(outcome, errJobGone))
	})
	if outcome != nil {
		return fmt.Errorf("backup %s: %w", job, outcome)
	}
	if cerr != nil {
		return fmt.Errorf("backup %s: take its target out: %w", job, cerr)
	}
	return nil
}

// dropBackup takes the copy job's target out of QEMU (job-dismiss,
// blockdev-del, remove-fd of the descriptors marked opaque+job),
// cancelling the job first when cancel is set (cut short or failed: it
// may still run).
func (c *qmp) dropBackup(ctx context.Context, job, opaque string, cancel bool) error {
	if cancel {
		_ = c.execute(ctx, "block-job-cancel", map[string]any{"device": job, "force": true}, nil)
		for i := 0; i < 50; i++ {
			var jobs []qmpJob
			if c.execute(ctx, "query-jobs", nil, &jobs) != nil || !slices.ContainsFunc(jobs, func(j qmpJob) bool { return j.ID == job && j.Status != "concluded" }) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	_ = c.execute(ctx, "job-dismiss", map[string]any{"id": job}, nil)
	if err := c.execute(ctx, "blockdev-del", map[string]any{"node-name": job}, nil); err != nil {
		return err
	}
	return c.removeFDs(ctx, opaque+job)
}

// DropBackups implements vmm.Overlayer: the copies are found by their
// targets' fdsets (marked backupOpaque+job by StartBackup).
func (d *Driver) DropBackups(ctx context.Context, h vmm.Handle) (int, error) {
	n := 0
	err := withQMP(ctx, h.APISocket, func(c *qmp) error {
		sets, err := c.fdsets(ctx)
		if err != nil {
			return err
		}
		var jobs, mirrors []string
		for _, s := range sets {
			for _, f := range s.FDs {
				if job, ok := strings.CutPrefix(f.Opaque, backupOpaque); ok && !slices.Contains(jobs, job) {
					jobs = append(jobs, job)
				}
				if job, ok := strings.CutPrefix(f.Opaque, mirrorOpaque); ok && !slices.Contains(mirrors, job) {
					mirrors = append(mirrors, job)
				}
			}
		}
		for _, job := range jobs {
			if err := c.dropBackup(ctx, job, backupOpaque, true); err != nil {
				return fmt.Errorf("backup %s: %w", job, err)
			}
			n++
		}
		if len(mirrors) == 0 {
			return nil
		}
		var blocks []blockInfo
		if err := c.execute(ctx, "query-block", nil, &blocks); err != nil {
			return err
		}
		for _, job := range mirrors {
			// Switched onto already: the target is the disk; only its
			// spare descriptor goes (Mirror, run again, sees it done).
			if slices.ContainsFunc(blocks, func(b blockInfo) bool { return b.Inserted != nil && b.Inserted.NodeName == job }) {
				_ = c.execute(ctx, "job-dismiss", map[string]any{"id": job}, nil)
				if err := c.removeFDs(ctx, mirrorOpaque+job); err != nil {
					return err
				}
				continue
			}
			if err := c.dropBackup(ctx, job, mirrorOpaque, true); err != nil {
				return fmt.Errorf("mirror %s: %w", job, err)
			}
			n++
		}
		return nil
	})
	return n, err
}

// mirrorOpaque marks the fdset of a mirror's target, by job.
const mirrorOpaque = "mirror:"

// Mirror implements vmm.Overlayer: the target goes in by descriptor
// (add-fd) as a raw node with discard=unmap (what reads as zeroes stays
// a hole), a blockdev-mirror job (sync full, named after the node)
// copies the disk into it while the guest writes on, and once it is
// ready job-complete switches the disk onto it; the former nodes are
// closed with it. Cut short before the switch, the job is cancelled and
// the target taken out. A disk whose top is raw already is left as it is
// (a Mirror cut short after the switch: a daemon that restarted) when
// QEMU holds the file at path, by the host's view (/proc), not QEMU's
// word; else that is an error, so the caller never takes a file QEMU
// does not write for the disk.
func (d *Driver) Mirror(ctx context.Context, h vmm.Handle, diskID, path string) error {
	if err := withQMP(ctx, h.APISocket, func(c *qmp) error {
		b, err := c.top(ctx, diskID)
		if err != nil {
			return err
		}
		if b.Inserted.Drv == "raw" {
			return errMirrored
		}
		return nil
	}); errors.Is(err, errMirrored) {
		if open, _ := proc.Holds(h.PID, path); !open {
			return fmt.Errorf("mirror of disk %s: the disk is raw already, but qemu does not hold %s", diskID, path)
		}
		return nil
	} else if err != nil {
		return fmt.Errorf("mirror of disk %s: %w", diskID, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("mirror of disk %s: %w", diskID, err)
	}
	defer f.Close()
	// Emptied first: a Mirror cut short before its switch leaves the
	// file partly written, and the copy skips what reads as zeroes.
	fi, err := f.Stat()
	if err == nil {
		err = f.Truncate(0)
	}
	if err == nil {
		err = f.Truncate(fi.Size())
	}
	if err != nil {
		return fmt.Errorf("mirror of disk %s: %w", diskID, err)
	}
	// A read-only descriptor too, for the target's fdset once it is the
	// disk: what a later Overlay needs to leave QEMU holding it read-only.
	ro, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("mirror of disk %s: %w", diskID, err)
	}
	defer ro.Close()
	node, err := copyNodeName("mr")
	if err != nil {
		return err
	}
	err = withQMP(ctx, h.APISocket, func(c *qmp) error {
		return c.startCopy(ctx, f, node, mirrorOpaque, true, "blockdev-mirror", diskID, nil)
	})
	if err != nil {
		return fmt.Errorf("mirror of disk %s: %w", diskID, err)
	}
	switched := false
	outcome := awaitReady(ctx, h.APISocket, node)
	if outcome == nil {
		// Asked for, the switch is QEMU's: its outcome is waited for and
		// looked at whatever happens to ctx or a QMP call meanwhile, so
		// a switch made is never taken for one not made.
		wctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		outcome = withQMP(wctx, h.APISocket, func(c *qmp) error {
			return c.execute(wctx, "job-complete", map[string]any{"id": node}, nil)
		})
		if outcome == nil {
			outcome = awaitJob(wctx, h.APISocket, node)
		}
		switched = outcome == nil
		if !switched {
			_ = withQMP(wctx, h.APISocket, func(c *qmp) error {
				b, err := c.top(wctx, diskID)
				if err == nil && b.Inserted.NodeName == node {
					switched, outcome = true, nil
				}
				return err
			})
		}
		cancel()
	}
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cerr := withQMP(cctx, h.APISocket, func(c *qmp) error {
		if switched {
			// The node is the disk now and keeps its own descriptor; the
			// spare one in the fdset is the same file, left harmlessly if
			// this fails (DropBackups takes it later). The read-only one
			// joins the fdset first, as the disk's (canReopenReadOnly);
			// without it a later Overlay refuses (ErrNoOverlay) and the
			// disk is copied instead: nothing is lost.
			if set, ok, err := c.fdsetOf(cctx, mirrorOpaque+node); err == nil && ok {
				_ = c.executeFD(cctx, "add-fd", map[string]any{"fdset-id": set, "opaque": fdReadOnly}, ro, nil)
			}
			return c.removeFDs(cctx, mirrorOpaque+node)
		}
		return c.dropBackup(cctx, node, mirrorOpaque, !errors.Is(outcome, errJobGone))
	})
	if outcome != nil {
		return fmt.Errorf("mirror of disk %s: %w", diskID, errors.Join(outcome, cerr))
	}
	return nil
}

// errMirrored: the disk's top is raw already.
var errMirrored = errors.New("mirrored already")
