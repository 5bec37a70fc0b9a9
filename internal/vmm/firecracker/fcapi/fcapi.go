// Package fcapi holds the request and reply bodies of Firecracker's REST API
// (v1.x) that banger sends, reads or fakes: the driver marshals them and the
// fake firecracker (fakefc) decodes them strictly, so both sides of the
// tests speak one definition of the wire.
//
// Fields the driver does not set are omitempty, so its bodies carry only
// what it means. Required fields are plain values: the fake checks their
// presence on the raw body (Firecracker refuses a body without them).
package fcapi

import "encoding/json"

// MachineConfig is PUT/GET /machine-config.
type MachineConfig struct {
	VcpuCount       int     `json:"vcpu_count"`
	MemSizeMib      int     `json:"mem_size_mib"`
	Smt             bool    `json:"smt"`
	TrackDirtyPages *bool   `json:"track_dirty_pages,omitempty"`
	HugePages       string  `json:"huge_pages,omitempty"`
	CPUTemplate     *string `json:"cpu_template,omitempty"`
}

// BootSource is PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path,omitempty"`
	BootArgs        string `json:"boot_args,omitempty"`
}

// Drive is PUT /drives/{drive_id}.
type Drive struct {
	DriveID      string          `json:"drive_id"`
	PathOnHost   string          `json:"path_on_host"`
	IsRootDevice bool            `json:"is_root_device"`
	IsReadOnly   bool            `json:"is_read_only"`
	PartUUID     string          `json:"partuuid,omitempty"`
	CacheType    string          `json:"cache_type,omitempty"`
	IoEngine     string          `json:"io_engine,omitempty"`
	RateLimiter  json.RawMessage `json:"rate_limiter,omitempty"`
}

// NetworkInterface is PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID     string          `json:"iface_id"`
	HostDevName string          `json:"host_dev_name"`
	GuestMAC    string          `json:"guest_mac,omitempty"`
	RxRate      json.RawMessage `json:"rx_rate_limiter,omitempty"`
	TxRate      json.RawMessage `json:"tx_rate_limiter,omitempty"`
}

// Vsock is PUT /vsock. Firecracker binds UDSPath when it is configured and
// leaves the socket file behind when it exits.
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
	VsockID  string `json:"vsock_id,omitempty"`
}

// Logger is PUT /logger.
type Logger struct {
	LogPath       string `json:"log_path,omitempty"`
	Level         string `json:"level,omitempty"`
	ShowLevel     bool   `json:"show_level"`
	ShowLogOrigin bool   `json:"show_log_origin"`
	Module        string `json:"module,omitempty"`
}

// Metrics is PUT /metrics.
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// Action is PUT /actions: "InstanceStart", "SendCtrlAltDel" or
// "FlushMetrics".
type Action struct {
	ActionType string `json:"action_type"`
}

// VM is PATCH /vm: State "Paused" or "Resumed".
type VM struct {
	State string `json:"state"`
}

// SnapshotCreate is PUT /snapshot/create, accepted only while the VM is
// paused: SnapshotType "Full" or "Diff".
type SnapshotCreate struct {
	SnapshotType string `json:"snapshot_type,omitempty"`
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
}

// SnapshotLoad is PUT /snapshot/load, accepted only by a fresh process
// (nothing configured but the logger and metrics).
type SnapshotLoad struct {
	SnapshotPath        string            `json:"snapshot_path"`
	MemBackend          *MemBackend       `json:"mem_backend,omitempty"`
	EnableDiffSnapshots bool              `json:"enable_diff_snapshots,omitempty"`
	ResumeVM            bool              `json:"resume_vm,omitempty"`
	NetworkOverrides    []NetworkOverride `json:"network_overrides,omitempty"`
}

// MemBackend is where a loaded snapshot's memory comes from: BackendType
// "File" (BackendPath is the memory file, mapped privately) or "Uffd"
// (BackendPath is a unix socket of a page-fault handler).
type MemBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

// NetworkOverride points a snapshot's network interface at another host
// tap when it is loaded.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// InstanceInfo is the answer of GET /.
type InstanceInfo struct {
	ID         string `json:"id"`
	State      string `json:"state"` // "Not started", "Running", "Paused"
	VMMVersion string `json:"vmm_version"`
	AppName    string `json:"app_name"`
}

// VMConfig is the part of GET /vm/config's answer banger reads.
type VMConfig struct {
	Drives []Drive `json:"drives"`
	Vsock  *Vsock  `json:"vsock"`
}

// Fault is the body of an error answer.
type Fault struct {
	FaultMessage string `json:"fault_message"`
}
