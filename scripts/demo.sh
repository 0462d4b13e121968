#!/usr/bin/env bash
# make demo / make demo-down: a one-host cluster on this machine: its libvirtd, a vsphere-agent on
# it, a vsphere-controller (SQLite), examples/quickstart.json applied, its VMs running.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=/var/lib/vsphere/demo
IMAGES=/var/lib/vsphere/images
# The release build, as hosts install it (make release).
BIN="$ROOT/.build/release"
CTL="$BIN/vsphere-ctl"
# Where the CLI goes on the PATH; demo-down removes it only while it is this checkout's.
LINK=/usr/local/bin/vsphere-ctl
CONFIG=${VSPHERE_CONFIG:-$HOME/.config/vsphere/config.json}

wait_url() { # URL CA [CURL ARGS...]
    local url=$1 ca=$2
    shift 2
    for _ in $(seq 100); do curl -sf --cacert "$ca" "$@" "$url" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "demo: $url did not come up (logs in $STATE)" >&2
    return 1
}

running() { [ -e "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
    bash "$ROOT/scripts/libvirtd-up.sh"
    mkdir -p "$STATE" "$IMAGES"
    cp "$ROOT"/guest/out/{vmlinuz,initrd.img} "$IMAGES/"
    # The cluster CA (in the controller's data directory) issues the agent's identity and a client
    # identity for this script; the agent serves only mutual TLS.
    CONTROLLER="$BIN/vsphere-controller"
    "$CONTROLLER" init --data-dir "$STATE/controller" >/dev/null
    [ -e "$STATE/agent/tls/agent.crt" ] ||
        "$CONTROLLER" issue --data-dir "$STATE/controller" --name local --san 127.0.0.1 --san localhost --out "$STATE/agent/tls" --prefix agent >/dev/null
    # (Certificates made before roles existed state none: agents refuse them, so they are made again.)
    openssl x509 -in "$STATE/client/client.crt" -noout -subject 2>/dev/null | grep -q "OU *= *operator" ||
        "$CONTROLLER" issue --data-dir "$STATE/controller" --name demo-client --role operator --out "$STATE/client" --prefix client >/dev/null
    if ! running "$STATE/agent.pid"; then
        setsid "$BIN/vsphere-agent" --listen 127.0.0.1 --port 7443 --data-dir "$STATE/agent" \
            --host-name local --console-log-dir /var/log/libvirt/qemu </dev/null >>"$STATE/agent.log" 2>&1 &
        echo $! >"$STATE/agent.pid"
    fi
    wait_url https://127.0.0.1:7443/healthz "$STATE/controller/pki/ca.crt" --cert "$STATE/client/client.crt" --key "$STATE/client/client.key"
    if ! running "$STATE/controller.pid"; then
        setsid "$CONTROLLER" --listen 127.0.0.1 --port 8443 --database "$STATE/controller/state.db" \
            --data-dir "$STATE/controller" </dev/null >>"$STATE/controller.log" 2>&1 &
        echo $! >"$STATE/controller.pid"
    fi
    for _ in $(seq 100); do [ -e "$STATE/controller/tls/controller-ca.crt" ] && break; sleep 0.1; done
    wait_url https://127.0.0.1:8443/healthz "$STATE/controller/tls/controller-ca.crt"
    mkdir -p "$(dirname "$CONFIG")"
    for _ in $(seq 50); do [ -s "$STATE/controller/admin.token" ] && break; sleep 0.1; done
    (umask 077; printf '{"server": "https://127.0.0.1:8443", "ca": "%s", "tokenFile": "%s"}\n' \
        "$STATE/controller/tls/controller-ca.crt" "$STATE/controller/admin.token" >"$CONFIG")
    # The CLI on the PATH, unless another one is there already.
    if [ ! -e "$LINK" ] || [ "$(readlink "$LINK")" = "$CTL" ]; then ln -sfn "$CTL" "$LINK"; fi
    echo "== vsphere-ctl apply -f examples/quickstart.json --wait"
    "$CTL" apply -f "$ROOT/examples/quickstart.json" --wait --timeout 300
    echo
    echo "== vsphere-ctl get hosts"
    "$CTL" get hosts
    echo
    echo "== vsphere-ctl get vms"
    "$CTL" get vms
    echo
    echo "demo: controller https://127.0.0.1:8443 (CLI config $CONFIG), agent https://127.0.0.1:7443."
    if [ "$(readlink "$LINK" 2>/dev/null)" = "$CTL" ]; then
        echo "      Try: vsphere-ctl plan -f examples/quickstart.json; vsphere-ctl get events. Stop it all: make demo-down"
    else
        echo "      Try: $CTL plan -f examples/quickstart.json; $CTL get events. Stop it all: make demo-down"
    fi
}

down() {
    if running "$STATE/controller.pid" && [ -e "$CONFIG" ]; then
        "$CTL" delete -f "$ROOT/examples/quickstart.json" >/dev/null 2>&1 || true
        # Let the reconciler remove the VMs from the host before the daemons go.
        for _ in $(seq 60); do
            virsh -c qemu:///system list --all --name 2>/dev/null | grep -qxE 'hello|world' || break
            sleep 0.5
        done
    fi
    for p in controller agent; do
        if running "$STATE/$p.pid"; then
            kill -TERM "$(cat "$STATE/$p.pid")" 2>/dev/null || true
            for _ in $(seq 50); do running "$STATE/$p.pid" || break; sleep 0.1; done
            kill -KILL "$(cat "$STATE/$p.pid")" 2>/dev/null || true
        fi
    done
    for vm in hello world; do
        virsh -c qemu:///system destroy "$vm" >/dev/null 2>&1 || true
        virsh -c qemu:///system undefine "$vm" >/dev/null 2>&1 || true
    done
    # The resource pools' cgroup partitions the agent made (empty now), deepest first.
    find /sys/fs/cgroup/machine /sys/fs/cgroup/*/machine -depth -mindepth 1 -type d -name '*.partition' -exec rmdir {} + 2>/dev/null || true
    if [ -e "$CONFIG" ] && grep -q "$STATE" "$CONFIG" 2>/dev/null; then rm -f "$CONFIG"; fi
    if [ "$(readlink "$LINK" 2>/dev/null)" = "$CTL" ]; then rm -f "$LINK"; fi
    rm -rf "$STATE"
    echo "demo: down"
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
