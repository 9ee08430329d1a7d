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

// Provision creates or updates the QX_EVENTS stream and the qx_nodes bucket
// with the given replicas (less than 1 means 1). vdc-sim and tests call it;
// agents never do (their NATS users may not call the JetStream API).
func Provision(ctx context.Context, js jetstream.JetStream, replicas int) error {
	replicas = max(replicas, 1)
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        subjects.Stream,
		Description: "Quantix-OS node events (UpdateEvent, AgentEvent)",
		Subjects:    []string{subjects.AllEvents()},
		Storage:     jetstream.FileStorage,
		Duplicates:  DuplicateWindow,
		Replicas:    replicas,
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
