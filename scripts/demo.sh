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
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
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
"$BIN/vdc-sim" release --repo "$DEMO/repo" --key "$DEMO/keys/update.key" --channel dev --version 0.0.6 \
	--notes "Demo release 0.0.6" --component qx-node="$DEMO/src/qx-node" --component qx-console="$DEMO/src/qx-console"

"$BIN/vdc-sim" serve --repo "$DEMO/repo" --http "127.0.0.1:$HTTP_PORT" --nats-listen "127.0.0.1:$NATS_PORT" \
	--store "$DEMO/nats" >"$DEMO/vdc-sim.log" 2>&1 &
pids+=($!)

# A stand-in rc-service that records what it was asked.
cat >"$DEMO/rc-service" <<'RC'
#!/bin/sh
echo "$(date +%T) rc-service $*" >>"$(dirname "$0")/rc-service.log"
RC
chmod +x "$DEMO/rc-service"

for i in 1 2 3; do
	node="node-$i"
	root="$DEMO/$node/root"
	mkdir -p "$root/etc/quantix" "$root/opt/quantix/qx-node/bin" "$root/opt/quantix/qx-console/bin"
	echo '{"os":"0.0.5","components":{"qx-node":"0.0.5","qx-console":"0.0.5"}}' >"$root/etc/quantix/versions.json"
	echo "0.0.5" >"$root/opt/quantix/qx-node/VERSION"
	echo "0.0.5" >"$root/opt/quantix/qx-console/VERSION"
	echo "demo-token" >"$DEMO/$node/token"
	cat >"$DEMO/$node/agent.yaml" <<YAML
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
http:
  listen: 127.0.0.1:$((8080 + i))
  tokenFile: $DEMO/$node/token
YAML
	"$BIN/agent" --config "$DEMO/$node/agent.yaml" >"$DEMO/$node/agent.log" 2>&1 &
	pids+=($!)
done
sleep 1

cat <<TXT

Quantix demo running: Update Server http://127.0.0.1:$HTTP_PORT, NATS nats://127.0.0.1:$NATS_PORT,
agents node-1..3 with REST on 127.0.0.1:8081..8083 (token: demo-token). Logs in $DEMO.

Try, in another terminal:
  bin/vdc-sim check --all                     # every node answers: 0.0.6 available
  bin/vdc-sim apply --node node-1 --wait      # live progress until completed
  bin/vdc-sim hosts                           # the fleet table
  bin/vdc-sim events --node node-1            # every stored event of node-1
  curl -s 127.0.0.1:8082/api/v1/updates/check
  curl -s -XPOST -H 'Authorization: Bearer demo-token' 127.0.0.1:8082/api/v1/updates/apply
  curl -s 127.0.0.1:8082/api/v1/updates/status
  open http://127.0.0.1:8083/ in a browser for the Updates page

Ctrl-C stops the demo.
TXT
wait
