// Package subjects is the public contract between the Quantix-OS update agent and
// Quantix-vDC: the NATS subjects, the KV bucket and stream names, and the JSON
// messages exchanged on them. It imports nothing of this project, so a vDC, a
// dashboard or a test harness can depend on it alone.
//
// # Subjects (contract version v1)
//
//	vDC → node    qx.v1.node.{node}.update.check      request/reply  CheckRequest → CheckReply
//	vDC → node    qx.v1.node.{node}.update.apply      request/reply  ApplyCommand → Ack
//	vDC → node    qx.v1.node.{node}.update.cancel     request/reply  CancelCommand → Ack
//	vDC → node    qx.v1.node.{node}.update.status     request/reply  {} → StatusReport
//	vDC → nodes   qx.v1.fleet.update.check            scatter-gather CheckRequest → CheckReply (every node)
//	vDC → node    qx.v1.node.{node}.maintenance       publish        MaintenanceEvent
//	node → vDC    qx.v1.vdc.maintenance.{node}.request request/reply MaintenanceRequest → MaintenanceEvent
//	node → vDC    qx.v1.vdc.maintenance.{node}.status  request/reply MaintenanceStatusRequest → MaintenanceEvent
//	node → vDC    qx.v1.vdc.maintenance.{node}.release request/reply MaintenanceRelease → Ack
//	node → stream qx.v1.events.{node}.update          JetStream      UpdateEvent
//	node → stream qx.v1.events.{node}.agent           JetStream      AgentEvent
//	node → KV     bucket qx_nodes, key {node}         KV put         NodeState
//
// The stream QX_EVENTS captures qx.v1.events.> with file storage and a
// duplicate window of at least two minutes; every event's ID travels as the
// Nats-Msg-Id header so a republished event is stored once.
//
// Every event a node emits, UpdateEvent or AgentEvent, carries Seq: one counter
// per node that rises by exactly one per event and survives restarts. A consumer
// that sees Seq jump knows it missed an event; one that sees it repeat has a
// duplicate.
//
// Payloads are JSON with camelCase field names. Decoders in this package are
// strict: unknown fields, trailing data and payloads over MaxPayload are refused.
package subjects

import (
	"errors"
	"fmt"
	"strings"
)

// Version is the contract version carried in every subject.
const Version = "v1"

// Root is the prefix of every subject of this contract.
const Root = "qx." + Version

const (
	// Stream is the JetStream stream holding every node event.
	Stream = "QX_EVENTS"
	// Bucket is the KV bucket holding each node's latest NodeState under its node id.
	Bucket = "qx_nodes"
	// MsgIDHeader carries an event's ID for JetStream de-duplication.
	MsgIDHeader = "Nats-Msg-Id"
)

// ErrInvalidNodeID reports a node id that cannot be a single subject token.
var ErrInvalidNodeID = errors.New("invalid node id")

// ValidNodeID reports whether id is 1 to 64 characters of A-Za-z0-9_-.
func ValidNodeID(id string) error {
	if len(id) == 0 || len(id) > 64 {
		return fmt.Errorf("node id %q: must be 1 to 64 characters: %w", id, ErrInvalidNodeID)
	}
	for _, r := range id {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
		default:
			return fmt.Errorf("node id %q: character %q is not one of A-Za-z0-9_-: %w", id, r, ErrInvalidNodeID)
		}
	}
	return nil
}

func node(id string) string { return Root + ".node." + id }

// UpdateCheck is the subject on which node id answers a CheckRequest.
func UpdateCheck(id string) string { return node(id) + ".update.check" }

// UpdateApply is the subject on which node id takes an ApplyCommand.
func UpdateApply(id string) string { return node(id) + ".update.apply" }

// UpdateCancel is the subject on which node id takes a CancelCommand.
func UpdateCancel(id string) string { return node(id) + ".update.cancel" }

// UpdateStatus is the subject on which node id answers with its StatusReport.
func UpdateStatus(id string) string { return node(id) + ".update.status" }

// NodeMaintenance is the subject on which vDC publishes MaintenanceEvents for node id.
func NodeMaintenance(id string) string { return node(id) + ".maintenance" }

// NodeCommands matches every subject addressed to node id.
func NodeCommands(id string) string { return node(id) + ".>" }

// FleetCheck is the scatter-gather subject every node answers.
func FleetCheck() string { return Root + ".fleet.update.check" }

// Fleet matches every fleet-wide subject.
func Fleet() string { return Root + ".fleet.>" }

func vdcMaint(id string) string { return Root + ".vdc.maintenance." + id }

// VDCMaintenanceRequest is where node id asks vDC to put it into maintenance.
func VDCMaintenanceRequest(id string) string { return vdcMaint(id) + ".request" }

// VDCMaintenanceStatus is where node id asks vDC for the state of its maintenance.
func VDCMaintenanceStatus(id string) string { return vdcMaint(id) + ".status" }

// VDCMaintenanceRelease is where node id tells vDC its maintenance is over.
func VDCMaintenanceRelease(id string) string { return vdcMaint(id) + ".release" }

// VDCMaintenanceFrom matches every maintenance subject node id may publish to.
func VDCMaintenanceFrom(id string) string { return vdcMaint(id) + ".>" }

// VDCMaintenanceAll matches every node's maintenance subjects, for vDC.
func VDCMaintenanceAll() string { return Root + ".vdc.maintenance.*.*" }

// UpdateEvents is the stream subject of node id's UpdateEvents.
func UpdateEvents(id string) string { return Root + ".events." + id + ".update" }

// AgentEvents is the stream subject of node id's AgentEvents.
func AgentEvents(id string) string { return Root + ".events." + id + ".agent" }

// Events matches every event of node id.
func Events(id string) string { return Root + ".events." + id + ".>" }

// AllEvents matches every event of every node: the stream's subject filter.
func AllEvents() string { return Root + ".events.>" }

// InboxPrefix is the reply-inbox prefix node id uses, so that its NATS user may
// subscribe to its own replies and nobody else's.
func InboxPrefix(id string) string { return "_INBOX_" + id }

// Key is node id's key in Bucket.
func Key(id string) string { return id }

// KVSubject is the subject a put of node id's key in Bucket is published on.
// A node's NATS user may publish there and nowhere else in the bucket.
func KVSubject(id string) string { return "$KV." + Bucket + "." + Key(id) }

// KVAll matches puts of every key in Bucket.
func KVAll() string { return "$KV." + Bucket + ".>" }

// ErrUnknownSubject reports a subject outside this contract.
var ErrUnknownSubject = errors.New("unknown subject")

// Kind names what a subject of this contract is for.
type Kind string

// Kinds returned by Parse.
const (
	KindCheck              Kind = "check"
	KindApply              Kind = "apply"
	KindCancel             Kind = "cancel"
	KindStatus             Kind = "status"
	KindFleetCheck         Kind = "fleet.check"
	KindMaintenance        Kind = "maintenance"
	KindMaintenanceRequest Kind = "maintenance.request"
	KindMaintenanceStatus  Kind = "maintenance.status"
	KindMaintenanceRelease Kind = "maintenance.release"
	KindUpdateEvent        Kind = "event.update"
	KindAgentEvent         Kind = "event.agent"
)

// Parse splits a concrete subject of this contract into its kind and node id
// (empty for the fleet check). It is the inverse of the builders above.
func Parse(subject string) (Kind, string, error) {
	t := strings.Split(subject, ".")
	bad := fmt.Errorf("subject %q: %w", subject, ErrUnknownSubject)
	if len(t) < 4 || t[0] != "qx" || t[1] != Version {
		return "", "", bad
	}
	var k Kind
	var id string
	switch {
	case t[2] == "fleet" && len(t) == 5 && t[3] == "update" && t[4] == "check":
		return KindFleetCheck, "", nil
	case t[2] == "node" && len(t) == 6 && t[4] == "update":
		id = t[3]
		switch t[5] {
		case "check":
			k = KindCheck
		case "apply":
			k = KindApply
		case "cancel":
			k = KindCancel
		case "status":
			k = KindStatus
		default:
			return "", "", bad
		}
	case t[2] == "node" && len(t) == 5 && t[4] == "maintenance":
		id, k = t[3], KindMaintenance
	case t[2] == "vdc" && len(t) == 6 && t[3] == "maintenance":
		id = t[4]
		switch t[5] {
		case "request":
			k = KindMaintenanceRequest
		case "status":
			k = KindMaintenanceStatus
		case "release":
			k = KindMaintenanceRelease
		default:
			return "", "", bad
		}
	case t[2] == "events" && len(t) == 5:
		id = t[3]
		switch t[4] {
		case "update":
			k = KindUpdateEvent
		case "agent":
			k = KindAgentEvent
		default:
			return "", "", bad
		}
	default:
		return "", "", bad
	}
	if err := ValidNodeID(id); err != nil {
		return "", "", fmt.Errorf("subject %q: %w", subject, err)
	}
	return k, id, nil
}
