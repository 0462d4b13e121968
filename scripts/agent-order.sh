#!/usr/bin/env bash
# Writes scripts/agent.order: the functions a release agent runs while it starts, serves a real
# controller (which calls every agent all day: inventory, lists, stats, events, storage pools,
# networks, resource pools, revocations; its BoringSSL client also negotiates key exchanges curl does
# not offer), answers direct calls and one VM's life cycle, then idles. lld lays these out together (Package.swift, agentReleaseLinking), so the
# pages an idle agent has touched are few. Recorded with valgrind's callgrind on a throwaway agent
# on libvirt's test:///default driver, in a network namespace with only loopback (and this machine's
# mounts: `ip netns exec` would hide the cgroup file systems, whose code the agent runs too), with
# the real TLS setup. `make agent-order` runs it between two release builds; do that after a change
# that moves much code. A stale entry costs nothing but a page; a function missing from the list is
# laid out where it would be anyway.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/.build/release}
OUT=${OUT:-$ROOT/scripts/agent.order}
D=$(mktemp -d /tmp/vsphere-order.XXXXXX)
pid=
cpid=
cleanup() {
    if [ -n "$cpid" ]; then kill "$cpid" 2>/dev/null || true; wait "$cpid" 2>/dev/null || true; fi
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$D"
}
trap cleanup EXIT
command -v valgrind >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null
"$BIN/vsphere-controller" init --data-dir "$D/controller" >/dev/null
"$BIN/vsphere-controller" issue --data-dir "$D/controller" --name order-agent --san 127.0.0.1 --out "$D/agent/tls" --prefix agent >/dev/null
"$BIN/vsphere-controller" issue --data-dir "$D/controller" --name order-client --role operator --out "$D/client" --prefix client >/dev/null
echo '{}' >"$D/agent.json"
: >"$D/vmlinuz"; : >"$D/initrd.img"
# valgrind reads no DWARF 5 from this clang: a copy without debug sections (the symbols stay).
objcopy --strip-debug "$BIN/vsphere-agent" "$D/vsphere-agent"
unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh \
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$D/callgrind.out" -- "$D/vsphere-agent" --config "$D/agent.json" --listen 127.0.0.1 --port 17443 --libvirt-uri test:///default \
    --accelerator tcg --data-dir "$D/agent" --console-log-dir "$D/console" --host-name order >"$D/agent.log" 2>&1 &
pid=$!
inns() { nsenter -t "$pid" -n -- "$@"; }
api() {
    local method=$1 path=$2 body=${3:-}
    inns curl -sS -o /dev/null -w '%{http_code} ' --max-time 120 --cacert "$D/controller/pki/ca.crt" \
        --cert "$D/client/client.crt" --key "$D/client/client.key" -X "$method" -H 'Content-Type: application/json' \
        ${body:+--data "$body"} "https://127.0.0.1:17443$path"
}
for _ in $(seq 240); do
    api GET /healthz >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$D/agent.log" >&2; exit 1; }
    sleep 0.5
done
# The controller, in the agent's namespace, with this agent as its one host (as on the testbed:
# a shared storage pool and a bridged network).
mkdir -p "$D/shared"
# nsenter itself, not the inns function: a backgrounded function is a subshell, and $! would not be
# the controller.
nsenter -t "$pid" -n -- "$BIN/vsphere-controller" --listen 127.0.0.1 --port 18443 --database "$D/controller/state.db" --data-dir "$D/controller" \
    --reconcile-interval 1 >"$D/controller.log" 2>&1 &
cpid=$!
for _ in $(seq 100); do [ -s "$D/controller/admin.token" ] && break; sleep 0.1; done
printf '{"server": "https://127.0.0.1:18443", "ca": "%s", "tokenFile": "%s"}\n' "$D/controller/tls/controller-ca.crt" \
    "$D/controller/admin.token" >"$D/ctl.json"
cat >"$D/cluster.json" <<EOF
{"apiVersion": "vsphere/v1", "kind": "Cluster", "metadata": {"name": "order"}, "sites": [{"name": "dc1"}],
 "hosts": [{"name": "order", "site": "dc1", "agent": "https://127.0.0.1:17443"}],
 "storagePools": [{"name": "shared", "type": "shared", "path": "$D/shared"}],
 "networks": [{"name": "lan", "type": "bridge", "bridge": "br0"}]}
EOF
applied=
for _ in $(seq 60); do
    if inns env VSPHERE_CONFIG="$D/ctl.json" "$BIN/vsphere-ctl" apply -f "$D/cluster.json" >/dev/null 2>&1; then applied=1; break; fi
    sleep 0.5
done
[ -n "$applied" ] || { cat "$D/controller.log" >&2; echo "agent-order: the controller did not take the manifest" >&2; exit 1; }
spec='{"name":"order1","cpus":1,"memoryMiB":128,"boot":{"kernel":"'$D'/vmlinuz","initrd":"'$D'/initrd.img","cmdline":"console=ttyS0"}}'
inns timeout 5 curl -sS -N -o /dev/null --cacert "$D/controller/pki/ca.crt" --cert "$D/client/client.crt" \
    --key "$D/client/client.key" "https://127.0.0.1:17443/v1/events" 2>/dev/null &
events=$!
for round in 1 2 3; do
    for path in /v1/host /v1/vms /v1/stats /v1/storage-pools /v1/networks /v1/resource-pools /v1/migrations /metrics; do
        api GET "$path"
    done
    if [ "$round" = 2 ]; then
        api PUT /v1/vms/order1 "$spec"; api POST /v1/vms/order1/start; api GET /v1/vms/order1; api GET /v1/vms/order1/stats
        api POST /v1/vms/order1/destroy; api DELETE '/v1/vms/order1?force=true'
    fi
done
echo
wait "$events" 2>/dev/null || true
# Reconcile passes of the controller against the (slow, instrumented) agent.
sleep 45
if ! kill "$cpid" 2>/dev/null; then tail -20 "$D/controller.log" >&2; echo "agent-order: the controller stopped early" >&2; exit 1; fi
wait "$cpid" || true; cpid=
sleep 3
kill -TERM "$pid"; wait "$pid" || true; pid=
python3 - "$D/callgrind.out" "$D/vsphere-agent" >"$OUT.new" <<'PYEOF2'
import re, subprocess, sys
objects, names, objectOf = {}, {}, {}
current = None
line_pattern = re.compile(r"^(ob|cob|fn|cfn)=\((\d+)\)(?: (.*))?$")
for line in open(sys.argv[1], errors="replace"):
    m = line_pattern.match(line.rstrip("\n"))
    if not m:
        continue
    kind, ident, name = m.group(1), int(m.group(2)), m.group(3)
    if kind in ("ob", "cob"):
        if name:
            objects[ident] = name
        if kind == "ob":
            current = ident
    else:
        if name:
            names[ident] = re.sub(r"'\d+$", "", name)  # callgrind's recursion-level suffix: not part of the symbol
        if kind == "fn":
            objectOf.setdefault(ident, current)
ran = {names[i] for i, o in objectOf.items() if objects.get(o) == sys.argv[2] and not names[i].startswith("0x")}
if len(ran) < 1000:
    sys.exit(f"agent-order: only {len(ran)} functions recorded; the run went wrong")
# BoringSSL picks its assembly by CPU feature, and valgrind's virtual CPU has no AVX-512, VAES or
# ADX: the variants a real CPU would run (about 130 KiB in all) are listed as well.
symbols = subprocess.run(["nm", "--defined-only", sys.argv[2]], capture_output=True, text=True, check=True).stdout
variant = re.compile(r"BoringSSL.*(_adx|_avx2|_avx512|vpclmulqdq|_vaes)")
ran |= {line.split()[-1] for line in symbols.splitlines() if line.split()[-2:-1] in (["t"], ["T"]) and variant.search(line.split()[-1])}
print("\n".join(sorted(ran)))
PYEOF2
mv "$OUT.new" "$OUT"
echo "agent-order: $(wc -l <"$OUT") functions in $OUT"
