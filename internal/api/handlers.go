package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/quantix-os/update-agent/internal/engine"
	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/subjects"
)

func (s *Server) routes() *gin.Engine {
	r := gin.New()
	r.HandleMethodNotAllowed = true
	// A wrong path is a 404, not a redirect to a guess.
	r.RedirectTrailingSlash = false
	// The facade is reached directly; forwarded-for headers are not to be believed.
	r.ForwardedByClientIP = false
	_ = r.SetTrustedProxies(nil)

	r.Use(s.logRequests, s.recoverPanics, securityHeaders, s.checkHost)
	r.NoRoute(func(c *gin.Context) {
		abortError(c, http.StatusNotFound, CodeNotFound, fmt.Sprintf("no route %s %s", c.Request.Method, c.Request.URL.Path))
	})
	r.NoMethod(func(c *gin.Context) {
		abortError(c, http.StatusMethodNotAllowed, CodeMethodNotAllowed,
			fmt.Sprintf("%s %s: method not allowed (allowed: %s)", c.Request.Method, c.Request.URL.Path, c.Writer.Header().Get("Allow")))
	})

	r.GET("/", s.page)
	r.GET("/assets/*file", s.asset)
	r.GET("/healthz", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"status": "ok"}) })
	r.GET("/metrics", gin.WrapH(promhttp.HandlerFor(s.opts.Gatherer, promhttp.HandlerOpts{})))

	u := r.Group("/api/v1/updates")
	u.GET("/check", s.check)
	u.GET("/current", s.current)
	u.GET("/status", s.status)
	u.GET("/config", s.config)
	u.GET("/history", s.history)
	u.GET("/events", s.events)
	w := u.Group("", s.checkOrigin, s.checkToken, readBody)
	w.POST("/apply", s.apply)
	w.POST("/cancel", s.cancel)
	w.PUT("/config", s.updateConfig)
	return r
}

// checkResponse is GET /check: the CheckReply in the host UI's shape, which
// calls the available version latestVersion.
type checkResponse struct {
	NodeID             string                     `json:"nodeId"`
	Available          bool                       `json:"available"`
	CurrentVersion     string                     `json:"currentVersion"`
	LatestVersion      string                     `json:"latestVersion,omitempty"`
	AvailableVersion   string                     `json:"availableVersion,omitempty"`
	Channel            string                     `json:"channel"`
	Components         []subjects.ComponentUpdate `json:"components"`
	FullImageAvailable bool                       `json:"fullImageAvailable"`
	TotalDownloadSize  int64                      `json:"totalDownloadSize"`
	ReleaseNotes       string                     `json:"releaseNotes,omitempty"`
}

func (s *Server) check(c *gin.Context) {
	var req subjects.CheckRequest
	if v := c.Query("refresh"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			abortError(c, http.StatusBadRequest, CodeInvalidRequest, fmt.Sprintf("refresh=%q: want true or false", v))
			return
		}
		req.Refresh = b
	}
	reply, err := s.u.Check(c.Request.Context(), req)
	if err == nil && reply.Error != "" {
		err = errors.New(reply.Error)
	}
	if err != nil {
		abortError(c, http.StatusBadGateway, CodeCheckFailed, err.Error())
		return
	}
	comps := reply.Components
	if comps == nil {
		comps = []subjects.ComponentUpdate{}
	}
	c.JSON(http.StatusOK, checkResponse{
		NodeID:             reply.NodeID,
		Available:          reply.Available,
		CurrentVersion:     reply.CurrentVersion,
		LatestVersion:      reply.AvailableVersion,
		AvailableVersion:   reply.AvailableVersion,
		Channel:            reply.Channel,
		Components:         comps,
		FullImageAvailable: reply.FullImageAvailable,
		TotalDownloadSize:  reply.TotalDownloadSize,
		ReleaseNotes:       reply.ReleaseNotes,
	})
}

// currentResponse is GET /current, the seed's shape.
type currentResponse struct {
	OSVersion      string            `json:"osVersion"`
	QxNode         string            `json:"qxNode,omitempty"`
	QxConsole      string            `json:"qxConsole,omitempty"`
	HostUI         string            `json:"hostUi,omitempty"`
	CurrentVersion string            `json:"currentVersion"`
	Components     map[string]string `json:"components"`
}

func (s *Server) current(c *gin.Context) {
	v := s.u.Versions()
	comps := v.Components
	if comps == nil {
		comps = map[string]string{}
	}
	c.JSON(http.StatusOK, currentResponse{
		OSVersion:      v.OS,
		QxNode:         comps["qx-node"],
		QxConsole:      comps["qx-console"],
		HostUI:         comps["host-ui"],
		CurrentVersion: s.u.CurrentVersion(),
		Components:     comps,
	})
}

func (s *Server) status(c *gin.Context) {
	st := s.u.Status()
	if st.Versions.Components == nil {
		st.Versions.Components = map[string]string{}
	}
	c.JSON(http.StatusOK, st)
}

// operationResponse answers an accepted apply or cancel.
type operationResponse struct {
	Status      string `json:"status"`
	Message     string `json:"message,omitempty"`
	OperationID string `json:"operationId"`
}

func (s *Server) apply(c *gin.Context) {
	var cmd subjects.ApplyCommand
	if !decodeBody(c, &cmd) {
		return
	}
	ack, err := s.u.Apply(c.Request.Context(), cmd)
	if err != nil {
		status, code := http.StatusBadGateway, CodeCheckFailed
		switch {
		case errors.Is(err, engine.ErrBusy):
			status, code = http.StatusConflict, CodeBusy
		case errors.Is(err, engine.ErrNothingToApply):
			status, code = http.StatusConflict, CodeNothingToApply
		case errors.Is(err, engine.ErrInvalidRequest):
			status, code = http.StatusBadRequest, CodeInvalidRequest
		}
		abortError(c, status, code, reason(ack, err))
		return
	}
	if !ack.Accepted {
		// A repeated operationId gets the refusal it got the first time.
		abortError(c, http.StatusConflict, CodeRefused, reason(ack, errors.New("update refused")))
		return
	}
	msg := ack.Reason
	if msg == "" {
		msg = "update started"
	}
	c.JSON(http.StatusAccepted, operationResponse{Status: "started", Message: msg, OperationID: ack.OperationID})
}

func (s *Server) cancel(c *gin.Context) {
	var cmd subjects.CancelCommand
	if !decodeBody(c, &cmd) {
		return
	}
	ack, err := s.u.Cancel(c.Request.Context(), cmd)
	switch {
	case errors.Is(err, engine.ErrNoOperation):
		abortError(c, http.StatusConflict, CodeNoOperation, reason(ack, err))
	case err != nil:
		abortError(c, http.StatusInternalServerError, CodeInternal, reason(ack, err))
	case !ack.Accepted:
		abortError(c, http.StatusConflict, CodeRefused, reason(ack, errors.New("cancel refused")))
	default:
		c.JSON(http.StatusOK, operationResponse{Status: "cancelling", OperationID: ack.OperationID})
	}
}

// reason is the Ack's reason, else the error's text.
func reason(ack subjects.Ack, err error) string {
	if ack.Reason != "" {
		return ack.Reason
	}
	return err.Error()
}

func (s *Server) config(c *gin.Context) {
	c.JSON(http.StatusOK, s.u.Settings())
}

func (s *Server) updateConfig(c *gin.Context) {
	var upd engine.SettingsUpdate
	if !decodeBody(c, &upd) {
		return
	}
	set, err := s.u.UpdateSettings(upd)
	switch {
	case errors.Is(err, engine.ErrInvalidSettings):
		abortError(c, http.StatusBadRequest, CodeInvalidSettings, err.Error())
	case err != nil:
		abortError(c, http.StatusInternalServerError, CodeInternal, err.Error())
	default:
		c.JSON(http.StatusOK, set)
	}
}

// historyResponse is GET /history, newest first.
type historyResponse struct {
	History []journal.Entry `json:"history"`
}

func (s *Server) history(c *gin.Context) {
	h := slices.Clone(s.u.History())
	if h == nil {
		h = []journal.Entry{}
	}
	slices.Reverse(h)
	c.JSON(http.StatusOK, historyResponse{History: h})
}

// decodeBody strictly decodes the body readBody kept into v: one JSON
// object, no unknown fields; an empty body leaves v zero. It answers 400 and
// returns false when the body is bad.
func decodeBody(c *gin.Context, v any) bool {
	b, _ := c.Get(bodyKey)
	raw, _ := b.([]byte)
	if err := decodeJSON(raw, v); err != nil {
		abortError(c, http.StatusBadRequest, CodeInvalidRequest, err.Error())
		return false
	}
	return true
}

func decodeJSON(raw []byte, v any) error {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("request body: data after the JSON object")
	}
	return nil
}

// page serves the Updates page.
func (s *Server) page(c *gin.Context) {
	s.serveFile(c, "index.html")
}

// asset serves a file the page loads, from the page's assets/ directory.
func (s *Server) asset(c *gin.Context) {
	name := strings.TrimPrefix(path.Clean("/"+c.Param("file")), "/")
	s.serveFile(c, path.Join("assets", name))
}

func (s *Server) serveFile(c *gin.Context, name string) {
	if s.opts.Page == nil || !fs.ValidPath(name) {
		abortError(c, http.StatusNotFound, CodeNotFound, fmt.Sprintf("no page file %s", name))
		return
	}
	fi, err := fs.Stat(s.opts.Page, name)
	if err != nil || fi.IsDir() {
		// No directory listings.
		abortError(c, http.StatusNotFound, CodeNotFound, fmt.Sprintf("no page file %s", name))
		return
	}
	f, err := s.opts.Page.Open(name)
	if err != nil {
		abortError(c, http.StatusNotFound, CodeNotFound, fmt.Sprintf("no page file %s", name))
		return
	}
	defer f.Close()
	rs, ok := f.(io.ReadSeeker)
	if !ok {
		b, err := io.ReadAll(f)
		if err != nil {
			abortError(c, http.StatusInternalServerError, CodeInternal, fmt.Sprintf("read page file %s: %v", name, err))
			return
		}
		rs = bytes.NewReader(b)
	}
	// ServeContent sets the type from the name and answers conditional requests.
	http.ServeContent(c.Writer, c.Request, path.Base(name), fi.ModTime(), rs)
}
