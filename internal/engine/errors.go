package engine

import "errors"

// Sentinels the engine's callers (REST facade, bus) map to their own answers.
var (
	// ErrBusy: another update runs; the command was refused.
	ErrBusy = errors.New("another update is in progress")
	// ErrNothingToApply: the node already runs the release asked for.
	ErrNothingToApply = errors.New("nothing to apply")
	// ErrNoOperation: a cancel arrived while nothing runs.
	ErrNoOperation = errors.New("no update in progress")
	// ErrInvalidRequest: a command that cannot be carried out as written.
	ErrInvalidRequest = errors.New("invalid request")
)
