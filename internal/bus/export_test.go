package bus

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
)

// SetTimings shortens the NodeState heartbeat, the coalescing gap and the
// shutdown grace, for tests. Call before Serve.
func SetTimings(c *Conn, heartbeat, minGap, drainGrace time.Duration) {
	c.heartbeat, c.minGap, c.drainGrace = heartbeat, minGap, drainGrace
}

// Reply answers one request on subject as Serve would, without a server.
func Reply(eng Engine, subject string, data []byte) ([]byte, nats.Header, bool) {
	c := &Conn{node: eng.NodeID(), log: slog.New(slog.NewTextHandler(io.Discard, nil)), reqTimeout: time.Second}
	s := newServer(c, eng)
	defer s.hcancel()
	for _, ep := range s.endpoints() {
		if ep.subject == subject {
			body, hdr := s.reply(context.Background(), ep, data)
			return body, hdr, true
		}
	}
	return nil, nil, false
}
