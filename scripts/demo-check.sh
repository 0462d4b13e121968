#!/usr/bin/env bash
# make test's first phase: the README's quick start exactly as a new user runs it, on this machine's own
# libvirtd (its own cgroup layout, not the testbed's): `make demo` must leave both quickstart VMs
# running (per vsphere-ctl on the PATH and per virsh), and `make demo-down` must leave nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
unset VSPHERE_CONFIG VSPHERE_SERVER
fail() { echo "demo-check: $*" >&2; exit 1; }
leftovers() {
    local out=()
    for vm in hello world; do virsh -c qemu:///system dominfo "$vm" >/dev/null 2>&1 && out+=("domain $vm"); done
    pgrep -f '/vsphere-(agent|controller) .*demo' >/dev/null && out+=("demo daemons: $(pgrep -af '/vsphere-(agent|controller) .*demo' | tr '\n' ';')")
    [ -e /var/lib/vsphere/demo ] && out+=("/var/lib/vsphere/demo")
    [ -L /usr/local/bin/vsphere-ctl ] && [ "$(readlink /usr/local/bin/vsphere-ctl)" = "$PWD/.build/release/vsphere-ctl" ] && out+=("/usr/local/bin/vsphere-ctl")
    [ -e "$HOME/.config/vsphere/config.json" ] && grep -q /var/lib/vsphere/demo "$HOME/.config/vsphere/config.json" && out+=("CLI config")
    ls -d /sys/fs/cgroup/machine/*.partition /sys/fs/cgroup/*/machine/*.partition 2>/dev/null | sed 's/^/cgroup /' | while read -r l; do echo "$l"; done
    printf '%s\n' "${out[@]}"
}
# libvirtd and virtlogd are left as they were found (the demo starts them where nothing runs them).
# Only this machine's own (a container's or a test host's libvirtd is not the demo's).
ours() { local p; for p in $(pgrep -x 'libvirtd|virtlogd' || true); do [ "$(readlink "/proc/$p/ns/mnt")" = "$(readlink /proc/self/ns/mnt)" ] && echo "$p"; done; }
daemons_before=$(ours)
stop_daemons() {
    if [ -z "$daemons_before" ] && [ "$(cat /proc/1/comm 2>/dev/null)" != systemd ]; then
        for p in $(ours); do kill "$p" 2>/dev/null || true; done
    fi
}
trap 'make -s demo-down >/dev/null 2>&1 || true; stop_daemons' EXIT
start=$(date +%s)
make -s demo
echo "demo-check: make demo took $(($(date +%s) - start)) s"
command -v vsphere-ctl >/dev/null || fail "vsphere-ctl is not on the PATH after make demo"
vsphere-ctl get vms -o json | python3 -c '
import json, sys
vms = {v["name"]: v for v in json.load(sys.stdin)}
state = lambda n: vms.get(n, {}).get("state", "absent")
bad = [n + ": " + state(n) for n in ("hello", "world") if state(n) != "running"]
sys.exit("demo-check: not running per vsphere-ctl: " + ", ".join(bad) if bad else 0)'
for vm in hello world; do
    [ "$(virsh -c qemu:///system domstate "$vm" 2>/dev/null)" = running ] || fail "$vm is not running per virsh"
done
# A second apply of the same document changes nothing.
changes=$(vsphere-ctl apply -f examples/quickstart.json -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["changes"]))')
[ "$changes" = 0 ] || fail "a second apply of the quickstart made $changes changes"
make -s demo-down
trap stop_daemons EXIT
left=$(leftovers | sed '/^$/d')
[ -z "$left" ] || fail "left after make demo-down: $left"
echo "demo-check: ok (both quickstart VMs ran; nothing left after demo-down)"
