package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/quantix-os/update-agent/subjects"
)

// DuplicateWindow is how long the stream remembers event ids: long enough
// for an agent to retry an event whose ack it lost across a reconnect.
const DuplicateWindow = 2 * time.Minute

// The event stream's limits by default: events are the fleet's update
// history, kept for a quarter; the bytes bound a fleet stuck in a loop.
const (
	DefaultEventsMaxAge   = 90 * 24 * time.Hour
	DefaultEventsMaxBytes = 8 << 30
)

// Storage is how Provision lays out the stream and the bucket.
type Storage struct {
	Replicas int           // of the stream and the bucket; less than 1 means 1
	MaxAge   time.Duration // of an event in the stream; 0 keeps events forever
	MaxBytes int64         // of the stream, oldest events dropped first; 0 for no limit
}

// Provision creates or updates the QX_EVENTS stream and the qx_nodes bucket.
// vdc-sim and tests call it; agents never do (their NATS users may not call
// the JetStream API).
func Provision(ctx context.Context, js jetstream.JetStream, st Storage) error {
	replicas := max(st.Replicas, 1)
	maxBytes := st.MaxBytes
	if maxBytes <= 0 {
		maxBytes = -1 // the server's "no limit"
	}
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        subjects.Stream,
		Description: "Quantix-OS node events (UpdateEvent, AgentEvent)",
		Subjects:    []string{subjects.AllEvents()},
		Storage:     jetstream.FileStorage,
		Duplicates:  DuplicateWindow,
		Replicas:    replicas,
		MaxAge:      max(st.MaxAge, 0),
		MaxBytes:    maxBytes,
		Discard:     jetstream.DiscardOld,
	})
	if err != nil {
		return fmt.Errorf("provision stream %s: %w", subjects.Stream, err)
	}
	_, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      subjects.Bucket,
		Description: "Quantix-OS node state (NodeState by node id)",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return fmt.Errorf("provision bucket %s: %w", subjects.Bucket, err)
	}
	return nil
}
