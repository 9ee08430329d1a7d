package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
)

// events streams the engine's events as server-sent events: first the
// current status (event "status"), then every UpdateEvent (event "update",
// id its seq), with a comment line as heartbeat while idle. It ends when the
// client goes or the server shuts down.
func (s *Server) events(c *gin.Context) {
	stop, ok := s.addStream()
	if !ok {
		abortError(c, http.StatusServiceUnavailable, CodeShuttingDown, "the agent is shutting down")
		return
	}
	defer s.removeStream(stop)
	// Subscribe before reading the status, so no event falls between the two.
	evs, unsubscribe := s.u.Subscribe()
	defer unsubscribe()

	w := c.Writer
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // a buffering reverse proxy would hold events back
	c.Status(http.StatusOK)
	st := s.u.Status()
	if st.Versions.Components == nil {
		st.Versions.Components = map[string]string{}
	}
	if err := writeEvent(w, "", "status", st); err != nil {
		return
	}
	w.Flush()

	tick := time.NewTicker(s.heartbeat)
	defer tick.Stop()
	ctx := c.Request.Context()
	for {
		var err error
		select {
		case <-ctx.Done():
			return
		case <-stop:
			return
		case ev, ok := <-evs:
			if !ok {
				return
			}
			err = writeEvent(w, fmt.Sprint(ev.Seq), "update", ev)
		case <-tick.C:
			_, err = io.WriteString(w, ": heartbeat\n\n")
		}
		if err != nil {
			return // the client is gone
		}
		w.Flush()
	}
}

// writeEvent writes one event. JSON has no raw newlines, so data is one line.
func writeEvent(w io.Writer, id, event string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s event: %w", event, err)
	}
	if id != "" {
		if _, err := fmt.Fprintf(w, "id: %s\n", id); err != nil {
			return err
		}
	}
	_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
	return err
}
