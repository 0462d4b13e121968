#!/usr/bin/env bash
# API fuzzing with schemathesis against both OpenAPI documents, bounded in count and time: a throwaway
# agent on libvirt's test:///default driver and a throwaway controller (SQLite, no hosts), both on
# loopback with the real TLS setup (a cluster CA, mutual TLS to the agent, a token for the controller).
# Fails on any 5xx or a crash. Everything it starts is stopped and removed. The agent (and its fuzzer)
# run in a network namespace of their own with only loopback: the networks API makes real bridges and
# VXLAN tunnels, which must neither touch this machine's links nor send a packet anywhere.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/.build/debug}
ST=${SCHEMATHESIS:-/opt/vsphere-tools/bin/schemathesis}
EXAMPLES=${FUZZ_EXAMPLES:-25}
D=$(mktemp -d /tmp/vsphere-fuzz.XXXXXX)
NS=vs-fuzz
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    # The daemons' logs outlive the run, for a failure's backtrace.
    rm -rf /tmp/vsphere-fuzz-logs && mkdir -p /tmp/vsphere-fuzz-logs && cp "$D"/*.log /tmp/vsphere-fuzz-logs/ 2>/dev/null || true
    rm -rf "$D"
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
ip netns del "$NS" 2>/dev/null || true
ip netns add "$NS"
ip -n "$NS" link set lo up
inns() { ip netns exec "$NS" "$@"; }
"$BIN/vsphere-controller" init --data-dir "$D/controller" >/dev/null
"$BIN/vsphere-controller" issue --data-dir "$D/controller" --name fuzz-agent --san 127.0.0.1 --out "$D/agent/tls" --prefix agent >/dev/null
"$BIN/vsphere-controller" issue --data-dir "$D/controller" --name fuzz-client --role operator --out "$D/client" --prefix client >/dev/null
echo '{}' >"$D/agent.json"
ip netns exec "$NS" "$BIN/vsphere-agent" --config "$D/agent.json" --listen 127.0.0.1 --port 17443 --libvirt-uri test:///default --accelerator tcg \
    --data-dir "$D/agent" --console-log-dir "$D/console" --host-name fuzz >"$D/agent.log" 2>&1 &
pids+=($!)
# The fuzzer's own calls without credentials would otherwise spend its budget on 429s (the limit is
# tested on its own): a high one here, so every route is fuzzed for real.
"$BIN/vsphere-controller" --listen 127.0.0.1 --port 18443 --data-dir "$D/controller" --database "$D/controller/state.db" \
    --open-rate-limit 100000 >"$D/controller.log" 2>&1 &
pids+=($!)
CA=$D/controller/pki/ca.crt
for _ in $(seq 100); do
    inns curl -sf --cacert "$CA" --cert "$D/client/client.crt" --key "$D/client/client.key" https://127.0.0.1:17443/healthz >/dev/null 2>&1 &&
        curl -sf --cacert "$CA" https://127.0.0.1:18443/healthz >/dev/null 2>&1 && [ -s "$D/controller/admin.token" ] && break
    sleep 0.2
done
TOKEN=$(cat "$D/controller/admin.token")
rc=0
run() { # NAME SCHEMA URL [inns] ARGS...
    local name=$1 schema=$2 url=$3 wrap=()
    shift 3
    [ "${1:-}" = inns ] && { wrap=(ip netns exec "$NS"); shift; }
    echo "== schemathesis: $name ($EXAMPLES examples per operation)"
    timeout 600 "${wrap[@]}" "$ST" run "$schema" --url "$url" --checks not_a_server_error --max-examples "$EXAMPLES" --seed 20261201 \
        --tls-verify "$CA" --no-color "$@" || rc=1
}
# The event stream never ends by design: not fuzzed.
[ -n "${FUZZ_ONLY:-}" ] && [ "$FUZZ_ONLY" != agent ] || run agent "$ROOT/Schemas/agent-api.json" https://127.0.0.1:17443 inns \
    --request-cert "$D/client/client.crt" --request-cert-key "$D/client/client.key" --exclude-path /v1/events --exclude-path '/v1/vms/{name}/completed-job'
[ -n "${FUZZ_ONLY:-}" ] && [ "$FUZZ_ONLY" != controller ] || run controller "$ROOT/Schemas/controller-api.json" https://127.0.0.1:18443 -H "Authorization: Bearer $TOKEN"
for p in "${pids[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "fuzz: a daemon crashed (logs in /tmp/vsphere-fuzz-logs)"; tail -n 30 "$D/agent.log" "$D/controller.log"; rc=1; }
done
exit $rc
