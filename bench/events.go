package bench

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quantix-os/update-agent/internal/bus"
	"github.com/quantix-os/update-agent/internal/engine"
	"github.com/quantix-os/update-agent/internal/fetch"
	"github.com/quantix-os/update-agent/subjects"
)

// eventLimit is figure 5's target: p99 from event to consumer.
const eventLimit = 50 * time.Millisecond

// eventAgent is one agent of figure 5: engine and bus, wired as cmd/agent does.
type eventAgent struct {
	id      string
	eng     *engine.Engine
	conn    *bus.Conn
	js      jetstream.JetStream // bare publishes of the floor, on the same connection
	stop    context.CancelFunc
	busDone chan struct{}
}

// Events measures figure 5: EventAgents agents together emit EventRate
// events a second for EventSeconds; a JetStream consumer of the QX_EVENTS
// stream (as vDC runs) notes when each arrives. The latency is from the
// event's time, set when the engine emits it, to its receipt; it includes
// the journal write, the outbox, the acked JetStream publish and delivery.
// The agents emit through Engine.EmitAgent, the same path (journal, outbox,
// Conn.Publish) as every progress event. The floor: the same connections
// publishing events of the same size straight to JetStream (acked), no
// journal, at the same rate; it runs first.
func (s *Site) Events(ctx context.Context) []Result {
	name := fmt.Sprintf("events: p99 event to consumer, %d/s from %d agents, vs bare JetStream", s.opts.EventRate, s.opts.EventAgents)
	target := Target{Kind: MaxValue, Limit: ms(eventLimit)}
	agents, err := s.startEventAgents(ctx)
	defer stopEventAgents(agents)
	if err != nil {
		return []Result{failed("5", name, "ms", target, err)}
	}
	vdc, err := nats.Connect(s.in.nats, nats.Name("bench-events-consumer"))
	if err != nil {
		return []Result{failed("5", name, "ms", target, err)}
	}
	defer vdc.Close()
	floor, err := s.eventPhase(ctx, vdc, agents, func(a *eventAgent, seq uint64) error {
		ev := subjects.AgentEvent{ID: uuid.NewString(), NodeID: a.id, Seq: seq, Time: time.Now().UTC(), Type: subjects.EventOnline}
		b, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		m := nats.NewMsg(subjects.AgentEvents(a.id))
		m.Header.Set(subjects.MsgIDHeader, ev.ID)
		m.Data = b
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err = a.js.PublishMsg(pctx, m)
		return err
	})
	if err != nil {
		return []Result{failed("5", name, "ms", target, fmt.Errorf("floor: %w", err))}
	}
	agent, err := s.eventPhase(ctx, vdc, agents, func(a *eventAgent, _ uint64) error {
		a.eng.EmitAgent("")
		return nil
	})
	if err != nil {
		return []Result{failed("5", name, "ms", target, fmt.Errorf("agents: %w", err))}
	}
	s.log.Info("events", "agent p50", percentile(agent, 50), "agent p99", percentile(agent, 99), "agent max", percentile(agent, 100),
		"floor p50", percentile(floor, 50), "floor p99", percentile(floor, 99))
	return []Result{{ID: "5", Name: name, Unit: "ms", Value: ms(percentile(agent, 99)), Baseline: ms(percentile(floor, 99)), Target: target}}
}

func (s *Site) startEventAgents(ctx context.Context) ([]*eventAgent, error) {
	agents := make([]*eventAgent, s.opts.EventAgents)
	err := parallel(len(agents), func(i int) error {
		id := fmt.Sprintf("ev-%03d", i)
		dir := filepath.Join(s.opts.Dir, "events", id)
		root := filepath.Join(dir, "root")
		if err := hostRoot(root, fleetInstalled); err != nil {
			return err
		}
		fc, err := fetch.New(s.in.http, fetch.Options{})
		if err != nil {
			return err
		}
		eng, err := engine.New(engine.Options{NodeID: id, Root: root, StateDir: filepath.Join(dir, "state"),
			Keys: []ed25519.PublicKey{s.pub}, Fetcher: fc, ServerURL: s.in.http, Channel: fleetChannel})
		if err != nil {
			return err
		}
		conn, err := bus.Connect(ctx, bus.Options{NodeID: id, URL: s.in.nats})
		if err != nil {
			return err
		}
		js, err := jetstream.New(conn.NATS())
		if err != nil {
			conn.Close()
			return err
		}
		eng.SetPublisher(conn)
		actx, stop := context.WithCancel(context.Background())
		a := &eventAgent{id: id, eng: eng, conn: conn, js: js, stop: stop, busDone: make(chan struct{})}
		agents[i] = a
		eng.Start(actx)
		go func() {
			defer close(a.busDone)
			conn.Serve(actx, eng)
		}()
		return nil
	})
	if err != nil {
		return agents, err
	}
	// The agents announce themselves on start; let those events drain first.
	return agents, waitFor(ctx, "the agents' online events to drain", 30*time.Second, func() error {
		for _, a := range agents {
			if n := a.eng.Outbox(); n > 0 {
				return fmt.Errorf("agent %s has %d events waiting", a.id, n)
			}
		}
		return nil
	})
}

func stopEventAgents(agents []*eventAgent) {
	for _, a := range agents {
		if a == nil {
			continue
		}
		a.stop()
		<-a.busDone
		a.eng.Wait()
		a.conn.Close()
	}
}

// eventPhase runs emit for every agent at the configured rate, staggered
// evenly, while a fresh ordered consumer of the stream (new messages only)
// receives. It returns the latency of every event emitted in the phase, and
// fails when an event did not arrive or the rate was not kept.
func (s *Site) eventPhase(ctx context.Context, vdc *nats.Conn, agents []*eventAgent, emit func(a *eventAgent, seq uint64) error) ([]time.Duration, error) {
	js, err := jetstream.New(vdc)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	cons, err := js.OrderedConsumer(ctx, subjects.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subjects.AllEvents()},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	var mu sync.Mutex
	var lat []time.Duration
	var got atomic.Int64
	cc, err := cons.Consume(func(m jetstream.Msg) {
		recv := time.Now()
		var ev struct {
			Time time.Time `json:"time"`
		}
		if json.Unmarshal(m.Data(), &ev) != nil || ev.Time.Before(start) {
			return // not one of this phase's events
		}
		mu.Lock()
		lat = append(lat, recv.Sub(ev.Time))
		mu.Unlock()
		got.Add(1)
	})
	if err != nil {
		return nil, fmt.Errorf("consume: %w", err)
	}
	defer cc.Stop()

	period := time.Duration(len(agents)) * time.Second / time.Duration(s.opts.EventRate)
	dur := time.Duration(s.opts.EventSeconds) * time.Second
	var sent atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, len(agents))
	begin := time.Now().Add(100 * time.Millisecond)
	for i, a := range agents {
		wg.Go(func() {
			// Agent i fires at begin + i·period/len + k·period.
			next := begin.Add(time.Duration(i) * period / time.Duration(len(agents)))
			end := begin.Add(dur)
			for seq := uint64(1); next.Before(end); seq++ {
				time.Sleep(time.Until(next))
				if err := emit(a, seq); err != nil {
					errs <- fmt.Errorf("agent %s: %w", a.id, err)
					return
				}
				sent.Add(1)
				next = next.Add(period)
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	elapsed := time.Since(begin)
	want := int64(s.opts.EventRate) * int64(s.opts.EventSeconds)
	if n := sent.Load(); n < want*95/100 {
		return nil, fmt.Errorf("emitted %d events in %s, want %d (the emitters fell behind)", n, elapsed.Round(time.Millisecond), want)
	}
	if err := waitFor(ctx, "every event at the consumer", 30*time.Second, func() error {
		if n, w := got.Load(), sent.Load(); n < w {
			return fmt.Errorf("%d of %d events received", n, w)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	return lat, nil
}
