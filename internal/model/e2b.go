package model

import "time"

// E2BKey is an API key of the E2B-compatible control plane. Only a hash
// of the key is kept; Prefix (its first characters) names it in lists.
type E2BKey struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	Hash      string     `json:"-"` // hex sha256 of the whole key
	Prefix    string     `json:"prefix"`
	CreatedAt time.Time  `json:"created_at"`
	LastUsed  *time.Time `json:"last_used,omitempty"`
}

// E2BSandbox is what the E2B control plane adds to a VM it made: the
// template asked for, the metadata and default environment of commands,
// and envd's access token (handed to the SDK, written into the guest).
type E2BSandbox struct {
	VMID       string            `json:"vm_id"`
	TemplateID string            `json:"template_id"`
	Token      string            `json:"-"`
	Metadata   map[string]string `json:"metadata"`
	Env        map[string]string `json:"env"`
	CreatedAt  time.Time         `json:"created_at"`
}
