// Package bus is the agent's side of NATS: it connects as the node, answers
// vDC's update commands and the fleet-wide check, publishes the engine's
// events to the QX_EVENTS stream (acked and de-duplicated by event id), and
// keeps the node's NodeState in the qx_nodes bucket. Every subject comes from
// the subjects package.
//
// A node's NATS user may publish only its own event and KV key subjects and
// subscribe only its own command subjects, the fleet subjects and its own
// inbox prefix, so the bus never calls the JetStream API: events and KV puts
// are plain JetStream publishes whose acks come back on the node's inbox.
package bus

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/subjects"
)

// ErrNotConnected reports a publish attempted while the connection is down.
// The caller keeps the event and retries; failing fast keeps stale events
// out of the client's reconnect buffer.
var ErrNotConnected = errors.New("not connected to NATS")

// Reconnect timing: a fixed wait plus jitter so a fleet does not reconnect in
// lockstep after a server restart.
const (
	reconnectWait      = time.Second
	reconnectJitter    = 500 * time.Millisecond
	reconnectJitterTLS = time.Second
)

// Options configure a connection.
type Options struct {
	NodeID string
	URL    string // comma-separated server URLs allowed

	Creds    string // credentials file (JWT and seed)
	NkeySeed string // nkey seed file
	User     string
	Password string

	TLSCA       string // CA bundle file verifying the server
	TLSCert     string // client certificate file
	TLSKey      string // client key file
	TLSInsecure bool   // skip server certificate verification (tests only)

	Name         string        // connection name; default "qx-agent-{nodeId}"
	AgentVersion string        // reported in NodeState
	BootSlot     func() string // booted A/B slot, reported in events and NodeState; may be nil
	// OnReconnect, when set, is called after every reconnect (the agent wakes
	// its outbox so events kept during the outage go out at once).
	OnReconnect func()
	Logger      *slog.Logger
}

// Conn is the node's connection to the bus.
type Conn struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	node string
	opts Options
	log  *slog.Logger
	now  func() time.Time

	// connected is signalled on every (re)connect so Serve re-puts the
	// NodeState the server may have missed.
	connected chan struct{}

	// lost is closed when the connection drops, and replaced: a publish in
	// flight then stops waiting for an ack that cannot come on this
	// connection, instead of holding every later event until its timeout.
	lostMu sync.Mutex
	lost   chan struct{}

	heartbeat  time.Duration // NodeState refresh period
	minGap     time.Duration // minimum time between NodeState puts
	opTimeout  time.Duration // bound on one publish or KV put
	reqTimeout time.Duration // bound on one request's engine call
	drainGrace time.Duration // how long Serve waits for requests in flight at shutdown
}

// Connect connects to the bus as o.NodeID. It returns while the servers are
// still unreachable (the client keeps retrying forever), so the agent starts
// and updates locally while the bus is down.
func Connect(ctx context.Context, o Options) (*Conn, error) {
	if err := subjects.ValidNodeID(o.NodeID); err != nil {
		return nil, fmt.Errorf("bus: %w", err)
	}
	if o.URL == "" {
		return nil, errors.New("bus: no NATS server URL")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("bus: connect: %w", err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	log = log.With("component", "bus")
	c := &Conn{
		node:       o.NodeID,
		opts:       o,
		log:        log,
		now:        time.Now,
		connected:  make(chan struct{}, 1),
		lost:       make(chan struct{}),
		heartbeat:  30 * time.Second,
		minGap:     250 * time.Millisecond,
		opTimeout:  5 * time.Second,
		reqTimeout: 30 * time.Second,
		drainGrace: 5 * time.Second,
	}
	nopts, err := c.natsOptions()
	if err != nil {
		return nil, fmt.Errorf("bus: %w", err)
	}
	nc, err := nats.Connect(o.URL, nopts...)
	if err != nil {
		return nil, fmt.Errorf("bus: connect %s: %w", o.URL, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	c.nc, c.js = nc, js
	if !nc.IsConnected() {
		log.Warn("NATS not reachable yet, retrying in the background", "url", o.URL)
	}
	return c, nil
}

func (c *Conn) natsOptions() ([]nats.Option, error) {
	o := c.opts
	name := o.Name
	if name == "" {
		name = "qx-agent-" + o.NodeID
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.CustomInboxPrefix(subjects.InboxPrefix(o.NodeID)),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(reconnectWait),
		nats.ReconnectJitter(reconnectJitter, reconnectJitterTLS),
		nats.ConnectHandler(func(nc *nats.Conn) {
			c.log.Info("NATS connected", "server", nc.ConnectedUrlRedacted())
			c.signalConnected()
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			c.log.Info("NATS reconnected", "server", nc.ConnectedUrlRedacted())
			c.signalConnected()
			if c.opts.OnReconnect != nil {
				c.opts.OnReconnect()
			}
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			c.markLost()
			if err != nil {
				c.log.Warn("NATS disconnected", "err", err)
				return
			}
			c.log.Info("NATS disconnected")
		}),
		nats.ClosedHandler(func(*nats.Conn) { c.log.Debug("NATS connection closed") }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			// Permission violations and slow consumers land here.
			if sub != nil {
				c.log.Error("NATS async error", "subject", sub.Subject, "err", err)
				return
			}
			c.log.Error("NATS async error", "err", err)
		}),
	}
	if o.Creds != "" && o.NkeySeed != "" {
		return nil, errors.New("creds and nkey seed are both set: use one")
	}
	if o.Creds != "" {
		if _, err := os.Stat(o.Creds); err != nil {
			return nil, fmt.Errorf("creds file: %w", err)
		}
		opts = append(opts, nats.UserCredentials(o.Creds))
	}
	if o.NkeySeed != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NkeySeed)
		if err != nil {
			return nil, fmt.Errorf("nkey seed %s: %w", o.NkeySeed, err)
		}
		opts = append(opts, opt)
	}
	if o.User != "" {
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	}
	cfg, err := tlsConfig(o)
	if err != nil {
		return nil, err
	}
	if cfg != nil {
		opts = append(opts, nats.Secure(cfg))
	}
	return opts, nil
}

// tlsConfig builds the client TLS configuration, or nil when no TLS option is
// set (a tls:// URL still gets TLS with the system roots).
func tlsConfig(o Options) (*tls.Config, error) {
	if o.TLSCA == "" && o.TLSCert == "" && o.TLSKey == "" && !o.TLSInsecure {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.TLSInsecure}
	if o.TLSCA != "" {
		pem, err := os.ReadFile(o.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("tls ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca %s: no PEM certificate found", o.TLSCA)
		}
		cfg.RootCAs = pool
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return nil, errors.New("tls cert and tls key must be set together")
	}
	if o.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(o.TLSCert, o.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("tls client certificate %s: %w", o.TLSCert, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func (c *Conn) markLost() {
	c.lostMu.Lock()
	close(c.lost)
	c.lost = make(chan struct{})
	c.lostMu.Unlock()
}

func (c *Conn) lostCh() <-chan struct{} {
	c.lostMu.Lock()
	defer c.lostMu.Unlock()
	return c.lost
}

func (c *Conn) signalConnected() {
	select {
	case c.connected <- struct{}{}:
	default:
	}
}

// NATS is the underlying connection, for clients that share it (maintenance).
func (c *Conn) NATS() *nats.Conn { return c.nc }

// Close closes the connection, flushing what is buffered.
func (c *Conn) Close() { c.nc.Close() }

// Publish delivers one journaled event to the stream and returns once the
// stream acked it. The event id travels as Nats-Msg-Id, so an event
// republished after a lost ack is stored once. It satisfies engine.Publisher.
func (c *Conn) Publish(ctx context.Context, p journal.Pending) error {
	subj := subjects.UpdateEvents(c.node)
	if p.Agent {
		subj = subjects.AgentEvents(c.node)
	}
	m := nats.NewMsg(subj)
	m.Header.Set(subjects.MsgIDHeader, p.ID)
	m.Data = p.Payload
	if _, err := c.jsPublish(ctx, m); err != nil {
		return fmt.Errorf("publish event seq %d to %s: %w", p.Seq, subj, err)
	}
	return nil
}

// jsPublish publishes m through JetStream and waits for the ack, failing at
// once while disconnected.
func (c *Conn) jsPublish(ctx context.Context, m *nats.Msg) (*jetstream.PubAck, error) {
	lost := c.lostCh()
	if !c.nc.IsConnected() {
		return nil, ErrNotConnected
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opTimeout)
		defer cancel()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-lost:
			cancel(ErrNotConnected)
		case <-ctx.Done():
		}
	}()
	ack, err := c.js.PublishMsg(ctx, m)
	if err != nil && context.Cause(ctx) == ErrNotConnected {
		return nil, fmt.Errorf("connection lost before the ack: %w", ErrNotConnected)
	}
	return ack, err
}
