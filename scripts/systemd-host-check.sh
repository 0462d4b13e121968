#!/usr/bin/env bash
# make test's systemd phase: the daemons installed on a real systemd host as a package installs them.
# A Debian 12 container with systemd as PID 1, machined and libvirtd (scripts/systemd-host.sh, its own
# network namespace with only loopback) gets the release binaries in /usr/local/bin and the units of
# systemd/ in /etc/systemd/system, plus the drop-ins an operator writes (addresses, the database URL as
# a credential). Then, each a check:
#   - both units start as Type=notify: `systemctl start` returns once the HTTPS server listens, and
#     the daemon said so itself (its status text);
#   - their hardening holds: the controller runs as a dynamic user without capabilities, the agent
#     with CAP_NET_ADMIN in its bounding set, both with LimitNOFILE=65536; the controller reads its
#     database URL from a systemd credential (LoadCredential=);
#   - a VM in a resource pool starts, in the pool's slice (machine.slice/machine-gold.slice), and the
#     slice carries the pool's CPU and memory limits in the kernel's files; a VXLAN segment is built
#     (the agent's CAP_NET_ADMIN);
#   - the journal has the daemons' lines with priorities: `journalctl -p err` finds the agent's error
#     when libvirtd goes away, and not its informational lines;
#   - the watchdog: an agent that stops answering (SIGSTOP) is restarted by systemd.
# The container is removed afterwards, whatever happens (nothing of it is left).
set -uo pipefail
cd "$(dirname "$0")/.."
unset VSPHERE_CONFIG VSPHERE_SERVER
ROOT=$PWD
SH="$ROOT/scripts/systemd-host.sh"
NAME=${VSPHERE_SD_NAME:-vsphere-sd}
# VSPHERE_SD_KEEP=1: stop after the VM runs and leave the container up (bench/agent_soak.py measures its agent).
KEEP=${VSPHERE_SD_KEEP:-}
BIN="$ROOT/.build/release"
for b in vsphere-agent vsphere-controller vsphere-ctl; do
    [ -x "$BIN/$b" ] || { echo "systemd-host-check: $BIN/$b missing (make release)" >&2; exit 1; }
done
[ -e "$ROOT/guest/out/vmlinuz" ] || { echo "systemd-host-check: no guest image (make guest-image)" >&2; exit 1; }

passed=0
failed=0
check() { # DESCRIPTION COMMAND...: one check, its outcome on one line
    local what=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
        echo "ok   $what"
    else
        failed=$((failed + 1))
        echo "FAIL $what"
    fi
}
inside() { bash "$SH" exec "$NAME" "$@"; }
# A unit's property, e.g. prop vsphere-agent MainPID.
prop() { inside systemctl show "$1" -p "$2" --value; }

cleanup() { [ -n "$KEEP" ] || bash "$SH" down "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
t0=$(date +%s)
bash "$SH" image >/dev/null || { echo "systemd-host-check: the image could not be built" >&2; exit 1; }
bash "$SH" up "$NAME" --private-network --bind-ro "$BIN:/opt/vsphere/bin" --bind-ro "$ROOT/systemd:/opt/vsphere/systemd" \
    --bind-ro "$ROOT/guest/out:/opt/vsphere/guest" >/dev/null || { echo "systemd-host-check: the container did not boot" >&2; exit 1; }
echo "systemd-host-check: image and boot took $(($(date +%s) - t0)) s"

# Installed as a package would: binaries, units, the operator's configuration and drop-ins.
inside bash -s <<'EOF' || { echo "systemd-host-check: installing failed" >&2; exit 1; }
set -euo pipefail
install -m 0755 /opt/vsphere/bin/vsphere-agent /opt/vsphere/bin/vsphere-controller /opt/vsphere/bin/vsphere-ctl /usr/local/bin/
install -m 0644 /opt/vsphere/systemd/vsphere-agent.service /opt/vsphere/systemd/vsphere-controller.service /etc/systemd/system/
mkdir -p /etc/vsphere /var/lib/vsphere/images /etc/systemd/system/vsphere-controller.service.d
cp /opt/vsphere/guest/vmlinuz /opt/vsphere/guest/initrd.img /var/lib/vsphere/images/
# The database URL as a credential: never on the command line.
(umask 077; echo /var/lib/vsphere/controller/state.db >/etc/vsphere/database.url)
cat >/etc/systemd/system/vsphere-controller.service.d/local.conf <<'UNIT'
[Service]
LoadCredential=database:/etc/vsphere/database.url
ExecStart=
ExecStart=/usr/local/bin/vsphere-controller --data-dir /var/lib/vsphere/controller --database-file %d/database --listen 127.0.0.1 --port 8443 --reconcile-interval 1
UNIT
cat >/etc/vsphere/agent.json <<'JSON'
{ "listen": "127.0.0.1", "port": 7443, "accelerator": "tcg", "hostName": "sd1", "shutdownTimeoutSeconds": 5 }
JSON
systemctl daemon-reload
EOF

check "controller starts (Type=notify: start returns once it serves)" inside systemctl start vsphere-controller
code=$(inside curl -s -o /dev/null -w '%{http_code}' --cacert /var/lib/vsphere/controller/tls/controller-ca.crt https://127.0.0.1:8443/healthz)
check "controller answers HTTPS the moment start returned (got $code)" test "$code" = 200 -o "$code" = 503
check "controller told systemd it serves (status text)" test "$(prop vsphere-controller StatusText)" = serving
inside vsphere-controller issue --data-dir /var/lib/vsphere/controller --name sd1 --san 127.0.0.1 --out /var/lib/vsphere/agent/tls --prefix agent >/dev/null
check "agent starts (Type=notify)" inside systemctl start vsphere-agent
check "agent told systemd it serves (status text)" test "$(prop vsphere-agent StatusText)" = serving

cpid=$(prop vsphere-controller MainPID)
apid=$(prop vsphere-agent MainPID)
check "controller runs as a dynamic user, not root" test "$(inside ps -o user= -p "$cpid" | tr -d ' ')" != root
check "controller holds no capability" inside grep -qx 'CapEff:[[:space:]]*0000000000000000' "/proc/$cpid/status"
capbnd=$(inside awk '/^CapBnd/ {print $2}' "/proc/$apid/status")
check "agent may build bridges and tunnels (CAP_NET_ADMIN in its bounding set: $capbnd)" test $(((16#$capbnd >> 12) & 1)) = 1
# The unit asks for 65536 descriptors; a process gets that, or the most its container may have (here the
# container inherits the hard limit of whoever started it).
ceiling=$(inside awk '/^Max open files/ {print $5}' /proc/1/limits)
want=$((ceiling < 65536 ? ceiling : 65536))
for u in vsphere-controller vsphere-agent; do
    pid=$(prop $u MainPID)
    check "$u: LimitNOFILE=65536 in its unit" test "$(prop $u LimitNOFILE)" = 65536
    check "$u: its process may open $want files" inside grep -Eq "^Max open files +$want +$want" "/proc/$pid/limits"
done
check "controller took its database from the credential" inside sh -c "tr '\0' ' ' </proc/$cpid/cmdline | grep -q -- '--database-file /run/credentials/vsphere-controller.service/database'"

# The CLI as an operator on that host uses it, and a VM in a resource pool with limits.
inside bash -s <<'EOF'
set -euo pipefail
mkdir -p /root/.config/vsphere
echo '{"server": "https://127.0.0.1:8443", "ca": "/var/lib/vsphere/controller/tls/controller-ca.crt", "tokenFile": "/var/lib/vsphere/controller/admin.token"}' >/root/.config/vsphere/config.json
cat >/root/cluster.json <<'JSON'
{ "apiVersion": "vsphere/v1", "kind": "Cluster", "metadata": { "name": "sd" },
  "sites": [ { "name": "dc1" } ],
  "hosts": [ { "name": "sd1", "site": "dc1", "agent": "https://127.0.0.1:7443", "power": { "driver": "none" } } ],
  "networks": [ { "name": "seg", "type": "vxlan", "vni": 4242 } ],
  "resourcePools": [ { "name": "gold", "parent": null,
      "cpu": { "reservationMHz": 0, "shares": "high", "limitMHz": 1000 },
      "memory": { "reservationMiB": 0, "shares": "normal", "limitMiB": 1536 } } ],
  "vms": [ { "name": "sdvm", "cpus": 1, "memoryMiB": 256, "resourcePool": "gold",
      "boot": { "kernel": "/var/lib/vsphere/images/vmlinuz", "initrd": "/var/lib/vsphere/images/initrd.img", "cmdline": "console=ttyS0 vs.name=sdvm" },
      "nics": [ { "network": "seg" } ], "powerState": "running" } ] }
JSON
EOF
check "apply --wait: the VM runs" inside vsphere-ctl apply -f /root/cluster.json --wait --timeout 240
qpid=$(inside pgrep -f 'guest=sdvm' | head -n1)
check "the VM's QEMU runs in the pool's slice" inside grep -q 'machine.slice/machine-gold.slice/machine-qemu' "/proc/${qpid:-0}/cgroup"
pools=$(inside vsphere-ctl get resource-pools -o json)
check "the pool's share applied without error" python3 -c '
import json, sys
gold = [p for p in json.loads(sys.argv[1]) if p["name"] == "gold"][0]
hosts = gold.get("hosts") or []
ok = hosts and all(not h.get("error") and h.get("applied") and not h["applied"].get("errors") for h in hosts)
sys.exit(0 if ok else f"{gold}")' "$pools"
slice=/sys/fs/cgroup/cpu/machine.slice/machine-gold.slice
quota=$(inside cat "$slice/cpu.cfs_quota_us")
applied=$(python3 -c '
import json, sys
gold = [p for p in json.loads(sys.argv[1]) if p["name"] == "gold"][0]
print(((gold.get("hosts") or [{}])[0].get("applied") or {}).get("cpuQuotaMicros", ""))' "$pools")
check "the slice carries the CPU limit in the kernel (cfs_quota_us $quota, the agent read $applied)" test "${quota:--1}" -gt 0 -a "$quota" = "$applied"
limit=$(inside cat /sys/fs/cgroup/memory/machine.slice/machine-gold.slice/memory.limit_in_bytes)
check "the slice carries the memory limit in the kernel ($limit)" test "$limit" = $((1536 << 20))
check "systemd has the slice's properties" inside sh -c 'systemctl show machine-gold.slice -p MemoryMax --value | grep -qx 1610612736'
nets=$(inside vsphere-ctl get networks -o json)
check "the VXLAN segment is built (CAP_NET_ADMIN)" python3 -c '
import json, sys
seg = [n for n in json.loads(sys.argv[1]) if n["name"] == "seg"][0]
sys.exit(0 if all(h["up"] and not h.get("error") for h in seg["hosts"]) else f"{seg}")' "$nets"

if [ -n "$KEEP" ]; then
    leader=$(cat "${VSPHERE_SYSTEMD_HOST_DIR:-/run/vsphere-systemd-host}/$NAME/leader.pid")
    for p in $(pgrep -f '^/usr/local/bin/vsphere-agent' || true); do
        [ "$(readlink "/proc/$p/ns/pid")" = "$(readlink "/proc/$leader/ns/pid")" ] && echo "$p" >"${VSPHERE_SYSTEMD_HOST_DIR:-/run/vsphere-systemd-host}/$NAME/agent.pid"
    done
    echo "systemd-host-check: $NAME left up (its agent's pid here in ${VSPHERE_SYSTEMD_HOST_DIR:-/run/vsphere-systemd-host}/$NAME/agent.pid); $passed passed, $failed failed"
    exit $((failed > 0))
fi

# The journal: priorities. libvirtd goes away: the agent's error is found by -p err, its info lines are not.
inside systemctl stop libvirtd.service libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket >/dev/null 2>&1
sleep 3
check "journalctl -p err finds the agent's error" inside sh -c 'journalctl -u vsphere-agent -p err --no-pager | grep -q "libvirt connection lost"'
check "journalctl -p err leaves out its informational lines" inside sh -c '! journalctl -u vsphere-agent -p err --no-pager | grep -q "vsphere-agent starting"'
check "journalctl -p info has them" inside sh -c 'journalctl -u vsphere-agent -p info --no-pager | grep -q "vsphere-agent starting"'
inside systemctl start libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket libvirtd.service >/dev/null 2>&1

# The watchdog: an agent that stops answering is restarted by systemd (WatchdogSec=30s).
before=$(prop vsphere-agent NRestarts)
old=$(prop vsphere-agent MainPID)
inside kill -STOP "$old"
restarted=no
for _ in $(seq 60); do
    sleep 1
    now=$(prop vsphere-agent MainPID)
    if [ "$(prop vsphere-agent NRestarts)" -gt "$before" ] && [ "$now" != "$old" ] && [ "$now" != 0 ]; then restarted=yes; break; fi
done
check "a stalled agent is restarted by its watchdog" test $restarted = yes
check "the journal says why" inside sh -c 'journalctl -u vsphere-agent --no-pager | grep -qi "watchdog timeout"'
for _ in $(seq 30); do [ "$(prop vsphere-agent ActiveState)" = active ] && break; sleep 1; done
check "the restarted agent serves again" test "$(prop vsphere-agent ActiveState)" = active

check "the controller stops cleanly on SIGTERM" inside systemctl stop vsphere-controller
check "  and its unit's result is success" test "$(prop vsphere-controller Result)" = success

echo "systemd-host-check: $passed passed, $failed failed ($(($(date +%s) - t0)) s)"
[ "$failed" = 0 ]
