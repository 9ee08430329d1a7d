//go:build !failpoint

package main

import "log/slog"

// failpointHook is nil in the production build: the engine's failpoints do
// nothing. The test build (-tags failpoint) has failpoint_on.go instead.
func failpointHook(*slog.Logger) func(string) { return nil }
