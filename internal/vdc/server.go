// Package vdc plays Quantix-vDC on the bus for vdc-sim: it runs an embedded
// NATS server with JetStream, sends the update commands of the subjects
// contract to nodes (one at a time or fleet-wide), reads their states from the
// qx_nodes bucket and their events from the QX_EVENTS stream, and exposes vDC's
// REST side for hosts.
package vdc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ErrServerNotReady reports an embedded server that did not accept
// connections in time.
var ErrServerNotReady = errors.New("nats server not ready")

// StartServer runs an embedded nats-server with JetStream listening on listen
// ("127.0.0.1:4222"; port 0 picks a free one) and storing into storeDir. It
// returns once the server accepts connections; the caller shuts it down. The
// server logs through logger (nil: it does not log), its notices at debug level.
func StartServer(listen, storeDir string, logger *slog.Logger) (*server.Server, error) {
	if storeDir == "" {
		return nil, errors.New("start nats server: empty JetStream store dir")
	}
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("start nats server: listen address %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("start nats server: listen address %q: port %q is not 0 to 65535", listen, portStr)
	}
	if port == 0 {
		// nats-server reads 0 as "the default port 4222"; -1 is its "any free port".
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		Host:      host,
		Port:      port,
		JetStream: true,
		StoreDir:  storeDir,
		NoSigs:    true, // the caller owns signal handling
		NoLog:     logger == nil,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("start nats server on %s: %w", listen, err)
	}
	if logger != nil {
		debug := logger.Enabled(context.Background(), slog.LevelDebug)
		s.SetLoggerV2(serverLogger{logger.With("component", "nats-server")}, debug, false, false)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("start nats server on %s: %w", listen, ErrServerNotReady)
	}
	return s, nil
}

// serverLogger carries nats-server's printf-style log lines into slog.
type serverLogger struct{ l *slog.Logger }

// Noticef logs at debug level: an embedded server's start-up banner is noise
// beside the program's own log; its warnings and errors are not.
func (s serverLogger) Noticef(format string, v ...any) { s.l.Debug(fmt.Sprintf(format, v...)) }
func (s serverLogger) Warnf(format string, v ...any)   { s.l.Warn(fmt.Sprintf(format, v...)) }
func (s serverLogger) Fatalf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s serverLogger) Errorf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s serverLogger) Debugf(format string, v ...any)  { s.l.Debug(fmt.Sprintf(format, v...)) }
func (s serverLogger) Tracef(format string, v ...any)  { s.l.Debug(fmt.Sprintf(format, v...)) }
