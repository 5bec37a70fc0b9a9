package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// qmp is a minimal QMP client: one connection, commands sent one at a time,
// asynchronous events skipped. QEMU serves one QMP client per socket at a
// time, so callers open a connection per operation and close it at once.
type qmp struct {
	conn   net.Conn
	r      *bufio.Reader
	nextID int
}

// QMPError is an error answered by QEMU to a command.
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s (%s)", e.Command, e.Desc, e.Class)
}

// dialQMP connects to socket, reads the greeting and leaves capabilities
// negotiation mode. The connection honours ctx's deadline.
func dialQMP(ctx context.Context, socket string) (*qmp, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	c := &qmp{conn: conn, r: bufio.NewReader(conn)}
	c.setDeadline(ctx)
	// The greeting comes first. Once, a connection made right after a
	// backup job started read another line first (most likely an event):
	// events are skipped, and an error quotes what came.
	for i := 0; ; i++ {
		line, err := c.readLine()
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("qmp greeting on %s: %w", socket, err)
		}
		var greet struct {
			QMP *struct {
				Version json.RawMessage `json:"version"`
			} `json:"QMP"`
			Event string `json:"event"`
		}
		jerr := json.Unmarshal(line, &greet)
		if jerr == nil && greet.QMP != nil {
			break
		}
		if jerr != nil || greet.Event == "" || i >= 16 {
			conn.Close()
			return nil, fmt.Errorf("qmp greeting on %s: not a QMP server (read %.200q)", socket, line)
		}
	}
	if err := c.execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

func (c *qmp) Close() error { return c.conn.Close() }

func (c *qmp) setDeadline(ctx context.Context) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(10 * time.Second)
	}
	_ = c.conn.SetDeadline(dl)
}

// maxQMPLine bounds one message from QEMU. The largest answers banger
// asks for (the block graph, query-fdsets of one VM) are a few KiB; a
// QEMU the guest took over must not make the daemon buffer without end.
const maxQMPLine = 1 << 20

// readLine reads one message, at most maxQMPLine bytes.
func (c *qmp) readLine() ([]byte, error) {
	var line []byte
	for {
		part, err := c.r.ReadSlice('\n')
		if len(line)+len(part) > maxQMPLine {
			return nil, fmt.Errorf("a QMP message longer than %d bytes", maxQMPLine)
		}
		line = append(line, part...)
		switch err {
		case nil:
			return line, nil
		case bufio.ErrBufferFull:
			continue
		default:
			return nil, err
		}
	}
}

func (c *qmp) readMsg(v any) error {
	line, err := c.readLine()
	if err != nil {
		return err
	}
	return json.Unmarshal(line, v)
}

// execute sends command with args (nil: none), waits for the reply with
// the same id, skipping events, and decodes "return" into out (nil: ignore).
func (c *qmp) execute(ctx context.Context, command string, args any, out any) error {
	c.setDeadline(ctx)
	c.nextID++
	id := c.nextID
	req := map[string]any{"execute": command, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	return c.await(command, id, out)
}

// await reads until the reply with id, skipping events, and decodes its
// "return" into out (nil: ignore).
func (c *qmp) await(command string, id int, out any) error {
	for {
		var msg struct {
			ID     *int            `json:"id"`
			Event  string          `json:"event"`
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
		}
		if err := c.readMsg(&msg); err != nil {
			return fmt.Errorf("qmp %s: reading reply: %w", command, err)
		}
		if msg.Event != "" || msg.ID == nil || *msg.ID != id {
			continue
		}
		if msg.Error != nil {
			return &QMPError{Command: command, Class: msg.Error.Class, Desc: msg.Error.Desc}
		}
		if out == nil || len(msg.Return) == 0 {
			return nil
		}
		if err := json.Unmarshal(msg.Return, out); err != nil {
			return fmt.Errorf("qmp %s: decoding reply: %w", command, err)
		}
		return nil
	}
}

// qmpStatus is the answer of query-status.
type qmpStatus struct {
	Running bool   `json:"running"`
	Status  string `json:"status"`
}

// qmpVersion is the answer of query-version.
type qmpVersion struct {
	QEMU struct {
		Major int `json:"major"`
		Minor int `json:"minor"`
		Micro int `json:"micro"`
	} `json:"qemu"`
	Package string `json:"package"`
}

func (v qmpVersion) String() string {
	return fmt.Sprintf("%d.%d.%d", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro)
}

// withQMP opens a connection to socket, runs f and closes it.
func withQMP(ctx context.Context, socket string, f func(*qmp) error) error {
	c, err := dialQMP(ctx, socket)
	if err != nil {
		return err
	}
	defer c.Close()
	return f(c)
}

// sendFD hands f to QEMU under name (QMP getfd: the descriptor travels
// with the command as SCM_RIGHTS), for a later "fd:<name>" URI. QEMU
// keeps its own copy; the caller may close f afterwards.
func (c *qmp) sendFD(ctx context.Context, name string, f *os.File) error {
	return c.executeFD(ctx, "getfd", map[string]any{"fdname": name}, f, nil)
}

// executeFD is execute with f's descriptor sent along the command
// (SCM_RIGHTS), as getfd and add-fd take it.
func (c *qmp) executeFD(ctx context.Context, command string, args any, f *os.File, out any) error {
	uc, ok := c.conn.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("qmp %s: not a unix socket", command)
	}
	c.setDeadline(ctx)
	c.nextID++
	id := c.nextID
	b, err := json.Marshal(map[string]any{"execute": command, "id": id, "arguments": args})
	if err != nil {
		return err
	}
	if _, _, err := uc.WriteMsgUnix(append(b, '\n'), syscall.UnixRights(int(f.Fd())), nil); err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	return c.await(command, id, out)
}
