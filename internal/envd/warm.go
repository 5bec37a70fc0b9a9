package envd

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"connectrpc.com/connect"

	"github.com/banger/banger/internal/envd/spec/filesystem"
	"github.com/banger/banger/internal/envd/spec/filesystem/filesystemconnect"
	"github.com/banger/banger/internal/envd/spec/process"
	"github.com/banger/banger/internal/envd/spec/process/processconnect"
)

// WarmUp asks the envd at baseURL, with its token, what a client's first
// requests ask, in the SDK's encoding (Connect with JSON): a Stat and a
// command's Start followed to its end, the command being what the SDK
// runs (`/bin/bash -l -c true`) in "/". Under software emulation a
// guest's first run of a code path costs its translation, so an envd
// started ahead of its sandbox's first request (at boot) does this
// while the guest is still setting itself up, and that request finds
// the server's code translated.
func WarmUp(ctx context.Context, baseURL, token string) error {
	opts := []connect.ClientOption{connect.WithProtoJSON(), connect.WithInterceptors(accessToken(token))}
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	fs := filesystemconnect.NewFilesystemClient(hc, baseURL, opts...)
	if _, err := fs.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: "/"})); err != nil {
		return fmt.Errorf("envd warm-up stat: %w", err)
	}
	cwd := "/"
	ps := processconnect.NewProcessClient(hc, baseURL, opts...)
	stream, err := ps.Start(ctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-l", "-c", "true"}, Cwd: &cwd},
	}))
	if err != nil {
		return fmt.Errorf("envd warm-up start: %w", err)
	}
	defer stream.Close()
	for stream.Receive() {
		if end := stream.Msg().GetEvent().GetEnd(); end != nil {
			if !end.Exited || end.ExitCode != 0 {
				return fmt.Errorf("envd warm-up command ended: %s", end.GetStatus())
			}
			return nil
		}
	}
	if err := stream.Err(); err != nil {
		return fmt.Errorf("envd warm-up start: %w", err)
	}
	return errors.New("envd warm-up: the command's stream ended without its end")
}

// accessToken sets X-Access-Token on every request of a client.
type accessToken string

func (t accessToken) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("X-Access-Token", string(t))
		return next(ctx, req)
	}
}

func (t accessToken) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("X-Access-Token", string(t))
		return conn
	}
}

func (accessToken) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
