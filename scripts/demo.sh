#!/usr/bin/env bash
# make demo / make demo-down: one host (this machine): its libvirtd, a vsphere-agent on it, and a
# guest booted through the agent's API. The controller arrives with the next issue.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=/var/lib/vsphere/demo
PORT=${DEMO_PORT:-7443}
BASE="https://127.0.0.1:$PORT"

api() { curl -sS --fail-with-body --cacert "$STATE/agent/tls/agent-ca.crt" "$@"; }

up() {
    bash "$ROOT/scripts/libvirtd-up.sh"
    mkdir -p "$STATE"
    if [ -e "$STATE/agent.pid" ] && kill -0 "$(cat "$STATE/agent.pid")" 2>/dev/null; then
        echo "demo: agent already running (pid $(cat "$STATE/agent.pid"))"
    else
        setsid "$ROOT/.build/debug/vsphere-agent" --listen 127.0.0.1 --port "$PORT" --data-dir "$STATE/agent" \
            --host-name "$(hostname)" </dev/null >"$STATE/agent.log" 2>&1 &
        echo $! >"$STATE/agent.pid"
        for _ in $(seq 100); do curl -sfk "$BASE/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    echo "== host inventory (GET /v1/host)"
    api "$BASE/v1/host" | python3 -m json.tool
    cat >"$STATE/demo1.json" <<JSON
{"name": "demo1", "cpus": 1, "memoryMiB": 256,
 "boot": {"kernel": "$ROOT/guest/out/vmlinuz", "initrd": "$ROOT/guest/out/initrd.img", "cmdline": "console=ttyS0 vs.name=demo1"},
 "resources": {"cpu": {"shares": "high"}, "memory": {"reservationMiB": 128}}}
JSON
    echo "== define and start demo1"
    api -X PUT --data @"$STATE/demo1.json" "$BASE/v1/vms/demo1" >/dev/null
    api -X POST "$BASE/v1/vms/demo1/start" >/dev/null 2>&1 || true
    for _ in $(seq 120); do
        api "$BASE/v1/vms/demo1/console" 2>/dev/null | grep -q VSPHERE-GUEST-READY && break
        sleep 1
    done
    api "$BASE/v1/vms/demo1/console" | grep -a VSPHERE-GUEST-READY || { echo "demo: demo1 did not boot" >&2; exit 1; }
    echo "== VMs (GET /v1/vms)"
    api "$BASE/v1/vms" | python3 -c 'import json,sys
print("%-10s %-10s %5s %8s" % ("NAME", "STATE", "VCPUS", "MEMORY"))
for v in json.load(sys.stdin): print("%-10s %-10s %5d %5d MiB" % (v["name"], v["state"], v["vcpus"], v["memoryMiB"]))'
    echo
    echo "demo: agent at $BASE (CA: $STATE/agent/tls/agent-ca.crt). The controller and 'vsphere-ctl get vms'"
    echo "      arrive with the next issue. Stop everything with: make demo-down"
}

down() {
    if [ -e "$STATE/agent.pid" ]; then
        api -X DELETE "$BASE/v1/vms/demo1?force=true" >/dev/null 2>&1 || true
        kill -TERM "$(cat "$STATE/agent.pid")" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$(cat "$STATE/agent.pid")" 2>/dev/null || break; sleep 0.1; done
    fi
    virsh -c qemu:///system destroy demo1 >/dev/null 2>&1 || true
    virsh -c qemu:///system undefine demo1 >/dev/null 2>&1 || true
    rm -rf "$STATE"
    echo "demo: down"
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
