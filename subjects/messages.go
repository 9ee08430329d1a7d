package subjects

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Status is a node's update status, as the host UI shows it.
type Status string

// The status values.
const (
	StatusIdle           Status = "idle"
	StatusChecking       Status = "checking"
	StatusUpToDate       Status = "up_to_date"
	StatusAvailable      Status = "available"
	StatusDownloading    Status = "downloading"
	StatusApplying       Status = "applying"
	StatusComplete       Status = "complete"
	StatusError          Status = "error"
	StatusRebootRequired Status = "reboot_required"
)

// Busy reports whether an update is in progress in this status.
func (s Status) Busy() bool {
	return s == StatusChecking || s == StatusDownloading || s == StatusApplying
}

// EventType classifies an UpdateEvent or AgentEvent.
type EventType string

// The event types.
const (
	EventStatus     EventType = "status"
	EventProgress   EventType = "progress"
	EventCompleted  EventType = "completed"
	EventFailed     EventType = "failed"
	EventRolledBack EventType = "rolled_back"
	EventCancelled  EventType = "cancelled"
	EventOnline     EventType = "online" // AgentEvent only
)

// Terminal reports whether t ends an operation.
func (t EventType) Terminal() bool {
	return t == EventCompleted || t == EventFailed || t == EventRolledBack || t == EventCancelled
}

// MaintenanceState is the state of a node's maintenance window.
type MaintenanceState string

// The maintenance states.
const (
	MaintenanceQueued    MaintenanceState = "queued"
	MaintenanceDraining  MaintenanceState = "draining"
	MaintenanceReady     MaintenanceState = "ready"
	MaintenanceCancelled MaintenanceState = "cancelled"
	MaintenanceFailed    MaintenanceState = "failed"
	MaintenanceReleased  MaintenanceState = "released"
)

// Update types of a MaintenanceRequest.
const (
	UpdateTypeComponent = "component"
	UpdateTypeFull      = "full"
)

// Versions are the installed versions of a node: the OS release and each component.
type Versions struct {
	OS         string            `json:"os"`
	Components map[string]string `json:"components"`
}

// CheckRequest asks a node whether an update is available. With SignedManifest
// (the Update Server's signed envelope, verbatim) the node verifies it and answers
// from it without contacting the Update Server.
type CheckRequest struct {
	Channel        string          `json:"channel,omitempty"`
	Refresh        bool            `json:"refresh,omitempty"`
	SignedManifest json.RawMessage `json:"signedManifest,omitempty"`
}

// ComponentUpdate is one component a release would change.
type ComponentUpdate struct {
	Name           string `json:"name"`
	CurrentVersion string `json:"currentVersion,omitempty"`
	NewVersion     string `json:"newVersion"`
	SizeBytes      int64  `json:"sizeBytes"`
}

// CheckReply answers a CheckRequest. Its shape is also the REST facade's
// GET /api/v1/updates/check, which calls AvailableVersion latestVersion too.
type CheckReply struct {
	NodeID             string            `json:"nodeId"`
	Available          bool              `json:"available"`
	CurrentVersion     string            `json:"currentVersion"`
	AvailableVersion   string            `json:"availableVersion,omitempty"`
	Channel            string            `json:"channel"`
	Components         []ComponentUpdate `json:"components"`
	FullImageAvailable bool              `json:"fullImageAvailable"`
	TotalDownloadSize  int64             `json:"totalDownloadSize"`
	ReleaseNotes       string            `json:"releaseNotes,omitempty"`
	Error              string            `json:"error,omitempty"`
}

// ApplyCommand asks a node to install a release. OperationID makes it
// idempotent: the same id gets the same Ack and the work is done once.
type ApplyCommand struct {
	OperationID    string   `json:"operationId"`
	Version        string   `json:"version,omitempty"`
	ForceReboot    bool     `json:"forceReboot"`
	Components     []string `json:"components,omitempty"`
	AllowDowngrade bool     `json:"allowDowngrade,omitempty"`
}

// CancelCommand asks a node to stop the operation in flight (OperationID empty:
// whichever runs).
type CancelCommand struct {
	OperationID string `json:"operationId,omitempty"`
	Reason      string `json:"reason,omitempty"`
}

// Ack answers a command.
type Ack struct {
	Accepted    bool   `json:"accepted"`
	OperationID string `json:"operationId"`
	Reason      string `json:"reason,omitempty"`
}

// Progress of a download or install.
type Progress struct {
	CurrentComponent string `json:"currentComponent"`
	DownloadedBytes  int64  `json:"downloadedBytes"`
	TotalBytes       int64  `json:"totalBytes"`
	Percentage       int    `json:"percentage"`
}

// StatusReport answers a status request.
type StatusReport struct {
	NodeID      string    `json:"nodeId"`
	Status      Status    `json:"status"`
	Message     string    `json:"message,omitempty"`
	Progress    *Progress `json:"progress,omitempty"`
	OperationID string    `json:"operationId,omitempty"`
	Versions    Versions  `json:"versions"`
}

// MaintenanceRequest asks vDC to drain the node before a reboot.
type MaintenanceRequest struct {
	NodeID         string `json:"nodeId"`
	MaintenanceID  string `json:"maintenanceId,omitempty"`
	TargetVersion  string `json:"targetVersion"`
	UpdateType     string `json:"updateType"`
	RequiresReboot bool   `json:"requiresReboot"`
	OperationID    string `json:"operationId"`
}

// MaintenanceStatusRequest asks vDC for the state of a maintenance.
type MaintenanceStatusRequest struct {
	MaintenanceID string `json:"maintenanceId"`
}

// MaintenanceEvent is vDC's word on a node's maintenance.
type MaintenanceEvent struct {
	MaintenanceID string           `json:"maintenanceId"`
	NodeID        string           `json:"nodeId"`
	State         MaintenanceState `json:"state"`
	VMsRemaining  *int             `json:"vmsRemaining,omitempty"`
	Reason        string           `json:"reason,omitempty"`
}

// MaintenanceRelease ends a maintenance; Outcome is the EventType the update ended with.
type MaintenanceRelease struct {
	MaintenanceID string `json:"maintenanceId"`
	NodeID        string `json:"nodeId"`
	Outcome       string `json:"outcome"`
}

// UpdateEvent reports a step of an update. Seq is shared with AgentEvent.
type UpdateEvent struct {
	ID          string    `json:"id"`
	NodeID      string    `json:"nodeId"`
	Seq         uint64    `json:"seq"`
	Time        time.Time `json:"time"`
	Type        EventType `json:"type"`
	OperationID string    `json:"operationId,omitempty"`
	Status      Status    `json:"status"`
	Message     string    `json:"message,omitempty"`
	Progress    *int      `json:"progress,omitempty"`
	Component   string    `json:"component,omitempty"`
	BytesDone   *int64    `json:"bytesDone,omitempty"`
	BytesTotal  *int64    `json:"bytesTotal,omitempty"`
	Version     string    `json:"version,omitempty"`
}

// AgentEvent announces a node's agent (type "online") with what it runs.
type AgentEvent struct {
	ID       string    `json:"id"`
	NodeID   string    `json:"nodeId"`
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Type     EventType `json:"type"`
	Versions Versions  `json:"versions"`
	BootSlot string    `json:"bootSlot,omitempty"`
}

// NodeState is a node's latest state, kept in Bucket under its node id.
type NodeState struct {
	NodeID         string    `json:"nodeId"`
	Status         Status    `json:"status"`
	Message        string    `json:"message,omitempty"`
	CurrentVersion string    `json:"currentVersion"`
	Versions       Versions  `json:"versions"`
	Progress       *int      `json:"progress,omitempty"`
	OperationID    string    `json:"operationId,omitempty"`
	BootSlot       string    `json:"bootSlot,omitempty"`
	AgentVersion   string    `json:"agentVersion,omitempty"`
	LastSeq        uint64    `json:"lastSeq"`
	UpdatedAt      time.Time `json:"updatedAt"`
}

// MaxPayload bounds every message of this contract (NATS' default max payload).
const MaxPayload = 1 << 20

// ErrMalformed reports a message that is not valid for its type.
var ErrMalformed = errors.New("malformed message")

// Decode strictly decodes a message: at most MaxPayload bytes, one JSON value,
// no unknown fields. An empty payload decodes as {} (status requests carry none).
func Decode(data []byte, v any) error {
	if len(data) > MaxPayload {
		return fmt.Errorf("%d bytes exceeds %d: %w", len(data), MaxPayload, ErrMalformed)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		data = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after JSON value: %w", ErrMalformed)
	}
	return nil
}
