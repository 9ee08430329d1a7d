#!/usr/bin/env bash
# make demo: a signed release served by vdc-sim and three agents on temp roots.
# Everything lives in one temp dir and on loopback; Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
DEMO=$(mktemp -d /tmp/qx-demo.XXXXXX)
HTTP_PORT=${HTTP_PORT:-9000}
NATS_PORT=${NATS_PORT:-4222}
pids=()
cleanup() {
	trap - INT TERM EXIT
	echo; echo "stopping demo..."
	touch "$DEMO/stop"
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	pkill -TERM -f "$DEMO/node-.*/agent.yaml" 2>/dev/null || true
	wait 2>/dev/null || true
	echo "demo files kept in $DEMO"
}
trap cleanup INT TERM EXIT

echo "demo dir: $DEMO"
"$BIN/vdc-sim" keygen --out "$DEMO/keys" >/dev/null
PUB=$(cat "$DEMO/keys/update.pub")

# Release 0.0.6: two components with new files.
for c in qx-node qx-console; do
	mkdir -p "$DEMO/src/$c/bin"
	printf '#!/bin/sh\necho %s 0.0.6\n' "$c" >"$DEMO/src/$c/bin/$c"
	chmod +x "$DEMO/src/$c/bin/$c"
	echo "0.0.6" >"$DEMO/src/$c/VERSION"
done
# A 16 MiB system image, compressible like a root filesystem.
# (awk stops by itself: a head cutting the pipe would fail the script under pipefail)
awk -v n=$((16 << 20)) 'BEGIN { for (i = 1; s < n; i++) { l = "quantix root filesystem block " i "\n"; s += length(l); printf "%s", l } }' >"$DEMO/quantix-os-0.0.6.img"
truncate -s $((16 << 20)) "$DEMO/quantix-os-0.0.6.img"
"$BIN/vdc-sim" release --repo "$DEMO/repo" --key "$DEMO/keys/update.key" --channel dev --version 0.0.6 \
	--notes "Demo release 0.0.6" --component qx-node="$DEMO/src/qx-node" --component qx-console="$DEMO/src/qx-console" \
	--image "$DEMO/quantix-os-0.0.6.img"

"$BIN/vdc-sim" serve --repo "$DEMO/repo" --http "127.0.0.1:$HTTP_PORT" --nats-listen "127.0.0.1:$NATS_PORT" \
	--store "$DEMO/nats" --vms-per-node 3 --drain-interval 1s --max-unavailable 1 >"$DEMO/vdc-sim.log" 2>&1 &
pids+=($!)

# A stand-in rc-service that records what it was asked.
cat >"$DEMO/rc-service" <<'RC'
#!/bin/sh
echo "$(date +%T) rc-service $*" >>"$(dirname "$0")/rc-service.log"
RC
chmod +x "$DEMO/rc-service"

# A node "reboots" by stopping its agent; the loop below then applies the GRUB
# boot rule with the boot simulator and starts the agent again on the new cmdline.
run_node() {
	local node=$1 dir="$DEMO/$1"
	while [ ! -e "$DEMO/stop" ]; do
		"$BIN/agent" --config "$dir/agent.yaml" >>"$dir/agent.log" 2>&1 || true
		[ -e "$dir/rebooting" ] || break
		rm -f "$dir/rebooting"
		slot=$("$BIN/vdc-sim" boot --grubenv "$dir/grubenv" --cmdline "$dir/cmdline")
		echo "$(date +%T) $node rebooted into slot $slot" | tee -a "$DEMO/reboots.log"
	done
}

for i in 1 2 3; do
	node="node-$i"
	dir="$DEMO/$node"
	root="$dir/root"
	mkdir -p "$root/etc/quantix" "$root/opt/quantix/qx-node/bin" "$root/opt/quantix/qx-console/bin"
	echo '{"os":"0.0.5","components":{"qx-node":"0.0.5","qx-console":"0.0.5"}}' >"$root/etc/quantix/versions.json"
	echo "0.0.5" >"$root/opt/quantix/qx-node/VERSION"
	echo "0.0.5" >"$root/opt/quantix/qx-console/VERSION"
	echo "demo-token" >"$dir/token"
	echo "system 0.0.5 in slot a" >"$dir/slot-a"
	: >"$dir/slot-b"
	echo "BOOT_IMAGE=/vmlinuz qx.slot=a quiet" >"$dir/cmdline"
	cat >"$dir/reboot" <<SH
#!/bin/sh
# Demo reboot: mark it and stop the agent; run_node boots the simulator.
touch "$dir/rebooting"
kill -TERM \$PPID
SH
	chmod +x "$dir/reboot"
	cat >"$dir/agent.yaml" <<YAML
nodeId: $node
nats:
  url: nats://127.0.0.1:$NATS_PORT
updates:
  serverUrl: http://127.0.0.1:$HTTP_PORT
  channel: dev
  publicKeys: ["$PUB"]
paths:
  root: $root
components:
  qx-node: { dir: opt/quantix/qx-node, service: qx-node }
  qx-console: { dir: opt/quantix/qx-console, service: qx-console }
services:
  rcService: $DEMO/rc-service
ab:
  slots: { a: $dir/slot-a, b: $dir/slot-b }
  grubEnv: $dir/grubenv
  cmdline: $dir/cmdline
  rebootCommand: [$dir/reboot]
  maintenanceTimeout: 5m
http:
  listen: 127.0.0.1:$((8080 + i))
  tokenFile: $dir/token
YAML
	run_node "$node" &
	pids+=($!)
done
sleep 1

cat <<TXT

Quantix demo running: Update Server http://127.0.0.1:$HTTP_PORT, NATS nats://127.0.0.1:$NATS_PORT,
agents node-1..3 with REST on 127.0.0.1:8081..8083 (token: demo-token). Logs in $DEMO.

Try, in another terminal:
  bin/vdc-sim check --all                     # every node answers: 0.0.6 available (components + image)
  bin/vdc-sim apply --node node-1 --force-reboot --wait
                                              # drain VMs, write slot b, reboot, trial boot, commit
  bin/vdc-sim rollout --version 0.0.6 --force-reboot
                                              # the rest of the fleet, one node in maintenance at a time
  bin/vdc-sim hosts                           # the fleet table
  bin/vdc-sim events --node node-1            # every stored event of node-1
  bin/vdc-sim watch                           # live events (another terminal)
  curl -s 127.0.0.1:8082/api/v1/updates/check
  curl -s -XPOST -H 'Authorization: Bearer demo-token' 127.0.0.1:8082/api/v1/updates/apply
  curl -s 127.0.0.1:8082/api/v1/updates/status
  open http://127.0.0.1:8083/ in a browser for the Updates page

Ctrl-C stops the demo.
TXT
wait
