package vdc

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"

	"github.com/google/uuid"

	"github.com/quantix-os/update-agent/subjects"
)

// maxBody bounds a REST request body; the only one is a tiny JSON object.
const maxBody = 64 << 10

// RESTHandler serves vDC's REST side for hosts:
//
//	POST /api/v1/updates/hosts/{nodeId}/apply  {"forceReboot": bool}
//	     → 202 Ack; 409 Ack when the node refuses; 400 bad node id or body;
//	       504 when the node does not answer
//	GET  /api/v1/updates/hosts                 → {"hosts": [NodeState...]}
//
// Errors are {"error": {"code", "message"}}, as on the agent's facade.
func RESTHandler(c *Client, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	h := &rest{c: c, log: logger}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/updates/hosts/{nodeId}/apply", h.apply)
	mux.HandleFunc("GET /api/v1/updates/hosts", h.hosts)
	return mux
}

type rest struct {
	c   *Client
	log *slog.Logger
}

// applyBody is the body of POST .../apply.
type applyBody struct {
	ForceReboot bool `json:"forceReboot"`
}

func (h *rest) apply(w http.ResponseWriter, r *http.Request) {
	node := r.PathValue("nodeId")
	if err := subjects.ValidNodeID(node); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_node_id", err.Error())
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "read body: "+err.Error())
		return
	}
	var body applyBody
	if err := subjects.Decode(data, &body); err != nil { // empty body: {} (no forced reboot)
		writeError(w, http.StatusBadRequest, "bad_request", "body: "+err.Error())
		return
	}
	cmd := subjects.ApplyCommand{OperationID: uuid.NewString(), ForceReboot: body.ForceReboot}
	ack, err := h.c.Apply(r.Context(), node, cmd)
	switch {
	case errors.Is(err, ErrNoAnswer):
		writeError(w, http.StatusGatewayTimeout, "node_timeout", err.Error())
		return
	case err != nil:
		h.log.Warn("apply via REST", "node", node, "err", err)
		writeError(w, http.StatusBadGateway, "bus_error", err.Error())
		return
	}
	h.log.Info("apply via REST", "node", node, "operation", ack.OperationID, "accepted", ack.Accepted, "reason", ack.Reason)
	status := http.StatusAccepted
	if !ack.Accepted {
		status = http.StatusConflict
	}
	writeJSON(w, status, ack)
}

func (h *rest) hosts(w http.ResponseWriter, r *http.Request) {
	hosts, err := h.c.Hosts(r.Context())
	if err != nil {
		h.log.Warn("list hosts via REST", "err", err)
		writeError(w, http.StatusBadGateway, "bus_error", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Hosts []subjects.NodeState `json:"hosts"`
	}{hosts})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	type detail struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	writeJSON(w, status, struct {
		Error detail `json:"error"`
	}{detail{code, msg}})
}
