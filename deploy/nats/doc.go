// Package nats holds the nats-server configuration production runs the
// Quantix-OS update bus on, and proves it: dev.conf (one server), cluster/
// (three servers, JetStream R3) and auth.conf (one user per node, permitted
// only its own subjects, as DESIGN.md section 3 requires).
//
// The package has no code. Its tests load the configs with the real
// nats-server, start it, and show with real connections that a node can do
// its job and cannot command, impersonate or eavesdrop on another node.
package nats
