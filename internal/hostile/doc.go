// Package hostile is the agent's hostile-input corpus: a table of attacks, each
// run against the real parts of the agent and each required to be refused
// cleanly.
//
// The attacks are forged, stale and malformed signed manifests; artifacts
// that lie about their hash or size, are cut short, never end or stall;
// component archives whose entries try to leave the staging directory or
// harm the host (".." and absolute names, escaping symlinks and hard links,
// writes through a symlink, device nodes, fifos, setuid bits, sparse
// entries, zstd bombs, absurd declared sizes); bus messages that are
// malformed, oversized, addressed to another node or replayed; and REST
// calls without the token, for a foreign Host, from another origin or
// changing state through GET.
//
// The parts are real: the update engine over the real Update Server on
// 127.0.0.1, an embedded NATS server with the agent's bus connection, and the
// REST facade on a loopback listener. "Refused cleanly" means three things:
// the error or status message names the cause; no byte was written outside
// the staging directory (the host root and a canary directory beside it are
// the same before and after, byte for byte); and nothing installed changed
// (same versions, no service restarted, no operation left running).
//
// The package holds no code, only its test:
//
//	go test -race -run TestHostile -v ./internal/hostile
//
// which ends with the line "hostile: N cases, N refused cleanly".
package hostile
