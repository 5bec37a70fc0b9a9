package daemon

import "github.com/banger/banger/internal/api"

var _ api.Service = (*Daemon)(nil)
