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
	// MaxSandboxes caps the sandboxes (running or paused) made with this
	// key that exist at once; 0 means no cap.
	MaxSandboxes int `json:"max_sandboxes,omitempty"`
}

// E2BSandbox is what the E2B control plane adds to a VM it made: the
// template asked for, the default environment of commands, and envd's
// access token (handed to the SDK, written into the guest), and whether
// its deadline pauses rather than deletes it. A sandbox's
// metadata is kept as the VM's labels, E2BMetaPrefix + key.
type E2BSandbox struct {
	VMID       string            `json:"vm_id"`
	TemplateID string            `json:"template_id"`
	Token      string            `json:"-"`
	Env        map[string]string `json:"env"`
	AutoPause  bool              `json:"auto_pause"` // the deadline pauses the VM instead of deleting it
	// AutoResume wakes the paused sandbox when a request is relayed to
	// it, with a deadline TimeoutSecs away (the create's; 0: E2B's
	// default).
	AutoResume  bool `json:"auto_resume"`
	TimeoutSecs int  `json:"timeout_secs"`
	// TrafficToken, when set (allowPublicTraffic false), must come with
	// every request relayed to a port of the sandbox other than envd's,
	// in the e2b-traffic-access-token header.
	TrafficToken string `json:"-"`
	// MaskHost, when set (maskRequestHost), is the Host header relayed
	// requests reach the guest with, "${PORT}" replaced by the port.
	MaskHost string `json:"mask_host,omitempty"`
	// HTTPSPorts are the guest ports the relay reaches over TLS
	// (httpsPorts), without checking the guest's certificate.
	HTTPSPorts []int     `json:"https_ports,omitempty"`
	KeyID      string    `json:"key_id,omitempty"` // the API key that made it ("" when unknown)
	CreatedAt  time.Time `json:"created_at"`
}

// E2BMetaPrefix is the label prefix of a sandbox's E2B metadata: metadata
// key k is the VM's label E2BMetaPrefix + k.
const E2BMetaPrefix = "e2b.meta/"
