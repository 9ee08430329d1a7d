package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
)

// Error codes of the {"error": {"code", "message"}} answers.
const (
	CodeNotFound         = "not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeUnauthorized     = "unauthorized"
	CodeForbiddenHost    = "forbidden_host"
	CodeCrossOrigin      = "cross_origin"
	CodeUnsupportedType  = "unsupported_media_type"
	CodeBodyTooLarge     = "body_too_large"
	CodeInvalidRequest   = "invalid_request"
	CodeInvalidSettings  = "invalid_settings"
	CodeBusy             = "busy"
	CodeNothingToApply   = "nothing_to_apply"
	CodeNoOperation      = "no_operation"
	CodeRefused          = "refused"
	CodeCheckFailed      = "check_failed"
	CodeShuttingDown     = "shutting_down"
	CodeInternal         = "internal"
)

// errorBody is every error answer's shape.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func abortError(c *gin.Context, status int, code, msg string) {
	c.AbortWithStatusJSON(status, errorBody{errorDetail{Code: code, Message: msg}})
}

// contentSecurityPolicy allows the page its own scripts, styles and event
// stream, and nothing else: no inline code, no framing, no foreign origins.
const contentSecurityPolicy = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"

// logRequests logs one record per request once it is answered.
func (s *Server) logRequests(c *gin.Context) {
	start := time.Now()
	c.Next()
	status := c.Writer.Status()
	level := slog.LevelInfo
	switch {
	case status >= 500:
		level = slog.LevelError
	case c.Request.URL.Path == "/healthz" || c.Request.URL.Path == "/metrics":
		// Probes and scrapes would drown everything else.
		level = slog.LevelDebug
	}
	s.log.Log(c.Request.Context(), level, "http request",
		"method", c.Request.Method,
		"path", c.Request.URL.Path,
		"status", status,
		"bytes", c.Writer.Size(),
		"duration", time.Since(start),
		"remote", c.Request.RemoteAddr,
	)
}

// recoverPanics turns a handler panic into a 500 and a logged stack, so one
// bad request does not take the agent down.
func (s *Server) recoverPanics(c *gin.Context) {
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		if v == http.ErrAbortHandler {
			panic(v) // net/http's way to drop a connection quietly
		}
		s.log.Error("http handler panic", "method", c.Request.Method, "path", c.Request.URL.Path,
			"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		if c.Writer.Written() {
			c.Abort()
			return
		}
		abortError(c, http.StatusInternalServerError, CodeInternal, "internal error")
	}()
	c.Next()
}

func securityHeaders(c *gin.Context) {
	h := c.Writer.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("Referrer-Policy", "no-referrer")
	if strings.HasPrefix(c.Request.URL.Path, "/api/") {
		h.Set("Cache-Control", "no-store")
	}
	c.Next()
}

// checkHost refuses requests addressed to a name that is not this host's: a
// page on a rebinding domain resolves it to 127.0.0.1 but still sends its own
// name as Host.
func (s *Server) checkHost(c *gin.Context) {
	if !s.hostAllowed(c.Request.Host) {
		abortError(c, http.StatusForbidden, CodeForbiddenHost,
			fmt.Sprintf("host %q is not served here; add it to the agent's http hosts", c.Request.Host))
		return
	}
	c.Next()
}

// checkOrigin refuses a write from a page of another origin. Browsers send
// Origin on every cross-origin request and on same-origin POST and PUT. The
// page's origin must be this server's own (scheme, host and port: a page
// served by another program on this host, on another port, is another
// origin) or one of Options.Origins.
func (s *Server) checkOrigin(c *gin.Context) {
	origin := c.GetHeader("Origin")
	if origin == "" {
		c.Next() // not a browser, or a same-origin request of an old one
		return
	}
	scheme := "http"
	if c.Request.TLS != nil {
		scheme = "https"
	}
	o, ok := normOrigin(origin)
	if !ok || (o != joinOrigin(scheme, c.Request.Host) && !s.origins[o]) {
		abortError(c, http.StatusForbidden, CodeCrossOrigin,
			fmt.Sprintf("origin %q may not change this host; add it to the agent's http origins", origin))
		return
	}
	c.Next()
}

// normOrigin is origin as scheme://host:port, lower case, with the scheme's
// default port filled in; false for anything else ("null", a path).
func normOrigin(origin string) (string, bool) {
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", false
	}
	return joinOrigin(strings.ToLower(u.Scheme), u.Host), true
}

func joinOrigin(scheme, hostport string) string {
	_, port, err := net.SplitHostPort(hostport)
	if err != nil || port == "" {
		port = map[string]string{"http": "80", "https": "443"}[scheme]
	}
	return scheme + "://" + net.JoinHostPort(normHost(hostport), port)
}

// checkToken requires the bearer token when one is configured.
func (s *Server) checkToken(c *gin.Context) {
	if s.opts.Token == "" {
		c.Next()
		return
	}
	scheme, given, found := strings.Cut(c.GetHeader("Authorization"), " ")
	// Hashing first makes the comparison constant-time in the length too.
	sum := sha256.Sum256([]byte(strings.TrimSpace(given)))
	if !found || !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(sum[:], s.tokenSum[:]) != 1 {
		c.Header("WWW-Authenticate", `Bearer realm="quantix-update-agent"`)
		abortError(c, http.StatusUnauthorized, CodeUnauthorized, "missing or wrong bearer token")
		return
	}
	c.Next()
}

// bodyKey is where readBody leaves the request body for the handler.
const bodyKey = "api.body"

// readBody reads the (capped) body, and requires a non-empty one to be JSON:
// a form or text/plain POST is what a cross-site page can send without a
// preflight, so refusing those closes that door even without a token.
func readBody(c *gin.Context) {
	b, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			abortError(c, http.StatusRequestEntityTooLarge, CodeBodyTooLarge,
				fmt.Sprintf("request body exceeds %d bytes", MaxBodyBytes))
			return
		}
		abortError(c, http.StatusBadRequest, CodeInvalidRequest, fmt.Sprintf("read request body: %v", err))
		return
	}
	if len(b) > 0 {
		ct := c.GetHeader("Content-Type")
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			abortError(c, http.StatusUnsupportedMediaType, CodeUnsupportedType,
				fmt.Sprintf("content type %q: a request body must be application/json", ct))
			return
		}
	}
	c.Set(bodyKey, b)
	c.Next()
}
