#!/usr/bin/env bash
# The testbed: several real libvirt hosts on this machine.
#
#   testbed.sh up HOSTS [SITES]   start hosts h1..hN (each: network + mount + UTS namespace, its own
#                                 libvirtd, virtlogd and vsphere-agent), sites joined by a WAN link
#   testbed.sh down               stop and remove everything (idempotent; safe after a failed run)
#   testbed.sh status             list hosts, their processes and addresses
#   testbed.sh exec HOST CMD...   run a command inside a host (its network, mounts and hostname)
#   testbed.sh restart-libvirtd HOST
#   testbed.sh restart-agent HOST [--kill]
#   testbed.sh restart-controller [--kill]
#   testbed.sh power HOST on|off|status
#                                 the testbed's power driver: off stops the host's agent, libvirtd and
#                                 virtlogd (any guest left is killed, as a power cut would); on starts
#                                 them again; the host's namespaces and addresses stay.
#
# GUEST_CPUS=LIST (e.g. 0) gives every agent that guestCPUs setting: guests run on those CPUs only.
#
# Addressing (shared/CONTRACT.md): site s = 10.250.s.0/24 on bridge vsbr<s>, host i at 10.250.s.i,
# the root namespace at .254 (set up before anything talks to a host, so no packet leaves this
# machine), the site's WAN router at .253. Between sites: a routed link through a userspace relay that
# delays each frame (this kernel has no netem) and a tbf rate cap.
set -euo pipefail

TB=${VSPHERE_TESTBED_DIR:-/var/lib/vsphere-testbed}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
AGENT=${VSPHERE_AGENT:-$ROOT/.build/debug/vsphere-agent}
CONTROLLER=${VSPHERE_CONTROLLER:-$ROOT/.build/debug/vsphere-controller}
CTL=${VSPHERE_CTL:-$ROOT/.build/debug/vsphere-ctl}
CTL_CONFIG=${VSPHERE_CONFIG:-$HOME/.config/vsphere/config.json}
WAN_DELAY_MS=${WAN_DELAY_MS:-15}
WAN_RATE=${WAN_RATE:-100mbit}

log() { echo "testbed: $*" >&2; }

site_of() { # host index, hosts, sites -> site number (contiguous blocks)
    local i=$1 n=$2 m=$3 per
    per=$(((n + m - 1) / m))
    echo $(((i - 1) / per + 1))
}

holder() { cat "$TB/$1/holder.pid"; }

in_host() { # HOST CMD...: join the host's cgroups, enter its network, mount, UTS and cgroup namespaces
    local h=$1 pid
    shift
    pid=$(holder "$h")
    # The shell joins the host's cgroup subtree, then execs nsenter, which execs CMD: one pid throughout.
    sh -c 'for f in /sys/fs/cgroup/*/vs-'"$h"'/cgroup.procs; do echo $$ >"$f"; done; exec "$@"' \
        in_host nsenter -t "$pid" -n -m -u -C -- "$@"
}

make_cgroups() { # HOST: a cgroup subtree per host in every hierarchy (cpuset needs its cpus and mems)
    local h=$1 c
    for c in /sys/fs/cgroup/*/; do
        mkdir -p "$c/vs-$h"
        if [ -e "$c/cpuset.cpus" ]; then
            cat "$c/cpuset.cpus" >"$c/vs-$h/cpuset.cpus"
            cat "$c/cpuset.mems" >"$c/vs-$h/cpuset.mems"
        fi
    done
}

remove_cgroups() { # every host's subtree, deepest first (guests' leftovers included)
    find /sys/fs/cgroup/*/ -mindepth 1 -maxdepth 1 -type d -name 'vs-*' 2>/dev/null | while read -r top; do
        find "$top" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
}

wait_for() { # SECONDS DESCRIPTION CMD...
    local limit=$1 what=$2 i=0
    shift 2
    while ! "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -gt $((limit * 10)) ]; then
            log "timed out waiting for $what"
            return 1
        fi
        sleep 0.1
    done
}

start_libvirtd() {
    local h=$1
    # Daemons get no inherited stdio: a caller reading our output must not wait on them.
    in_host "$h" virtlogd -d </dev/null >/dev/null 2>&1
    in_host "$h" libvirtd -d --listen </dev/null >>"$TB/$h/libvirtd.log" 2>&1
    wait_for 30 "libvirtd on $h" in_host "$h" virsh -c qemu:///system version
}

make_host() { # NAME ADDR SITE GW
    local h=$1 addr=$2 site=$3 gw=$4 dir="$TB/$1"
    mkdir -p "$dir"/{lib,cache,log/qemu,etc,agent}
    cp -a /etc/libvirt/. "$dir/etc/"
    rm -f "$dir"/etc/qemu/networks/autostart/*.xml
    local uuid
    uuid=$(cat /proc/sys/kernel/random/uuid)
    cat >>"$dir/etc/libvirtd.conf" <<EOF

# vsphere testbed host $h
host_uuid = "$uuid"
listen_tcp = 1
auth_tcp = "none"
tcp_port = "16509"
listen_addr = "$addr"
# TLS too (port 16514), with the host's certificate from the cluster CA (its own /etc/pki, below).
listen_tls = 1
EOF
    cat >>"$dir/etc/qemu.conf" <<EOF

# vsphere testbed host $h
user = "root"
group = "root"
security_driver = "none"
migration_address = "$addr"
migration_host = "$addr"
migrate_tls_x509_verify = 1
EOF
    host_pki "$h" "$addr"
    # Network: a veth from the site bridge into the host's namespace.
    ip netns add "vs-$h"
    ip link add "vs-$h" type veth peer name eth0 netns "vs-$h"
    ip link set "vs-$h" master "vsbr$site" up
    ip -n "vs-$h" link set lo up
    ip -n "vs-$h" link set eth0 up
    # Guests plug into br0, which carries the host's address and its uplink (eth0) to the site bridge.
    ip -n "vs-$h" link add br0 type bridge
    ip -n "vs-$h" link set eth0 master br0
    ip -n "vs-$h" link set br0 up
    ip -n "vs-$h" addr add "$addr/24" dev br0
    [ -n "$gw" ] && ip -n "vs-$h" route add 10.250.0.0/16 via "$gw"

    # Mounts, hostname and cgroups: private mount, UTS and cgroup namespaces held open by a sleeping
    # process. The holder joins the host's own cgroup subtree before unsharing its cgroup namespace, and
    # mounts every hierarchy afresh, so the host sees that subtree as its root: its libvirtd keeps its
    # guests under its own /machine, and a VM of the same name on two hosts (as during a migration)
    # gets two distinct cgroups. /sys is mounted anew so it shows the host's own network devices.
    rm -f "$dir/ready"
    make_cgroups "$h"
    nsenter --net="/run/netns/vs-$h" bash "$ROOT/scripts/testbed-holder.sh" "$h" "$dir" </dev/null >"$dir/holder.log" 2>&1 &
    echo $! >"$dir/holder.pid"
    wait_for 10 "namespace of $h" test -e "$dir/ready"
    echo "$addr" >"$dir/address"
    echo "$site" >"$dir/site"
    start_libvirtd "$h"
}

start_agent() {
    local h=$1 dir="$TB/$1" addr
    addr=$(cat "$dir/address")
    [ -x "$AGENT" ] || { log "no agent binary at $AGENT (run swift build first)"; return 1; }
    # nsenter execs the agent (no fork without a PID namespace), so $! is the agent's own pid.
    nsenter -t "$(holder "$h")" -n -m -u -- "$AGENT" --config "$dir/agent.json" \
        </dev/null >>"$dir/agent.log" 2>&1 &
    echo $! >"$dir/agent.pid"
    wait_for 60 "agent on $h" agent_curl "https://$addr:7443/healthz"
}

# curl as a client of the agents: mutual TLS with the testbed's client certificate from the cluster CA.
agent_curl() {
    curl -sf --cacert "$TB/controller/pki/ca.crt" --cert "$TB/client/client.crt" --key "$TB/client/client.key" "$@"
}

# The cluster CA (in the controller's data directory) and a client identity for the tests and these scripts.
make_ca() {
    [ -x "$CONTROLLER" ] || { log "no controller binary at $CONTROLLER"; return 1; }
    mkdir -p "$TB/controller"
    "$CONTROLLER" init --data-dir "$TB/controller" >/dev/null
    "$CONTROLLER" issue --data-dir "$TB/controller" --name testbed-client --role operator --out "$TB/client" --prefix client >/dev/null
    # Hosts bind their own pki directory over /etc/pki (libvirt's and QEMU's TLS files): the mount point
    # must exist; one made here is removed with the testbed.
    if [ ! -d /etc/pki ]; then mkdir /etc/pki && touch "$TB/made-etc-pki"; fi
}

# HOST ADDR: the host's identity from the cluster CA, for its agent (agent/tls) and its libvirtd and
# QEMU (pki/, which the host sees as /etc/pki: libvirtd's TLS listener and peer-to-peer client, QEMU's
# migration streams).
host_pki() {
    local h=$1 addr=$2 dir="$TB/$1" p
    "$CONTROLLER" issue --data-dir "$TB/controller" --name "$h" --san "$addr" --out "$dir/agent/tls" --prefix agent >/dev/null
    p="$dir/pki"
    mkdir -p "$p/CA" "$p/libvirt/private" "$p/qemu"
    cp "$dir/agent/tls/cluster-ca.crt" "$p/CA/cacert.pem"
    for role in server client; do
        cp "$dir/agent/tls/agent.crt" "$p/libvirt/${role}cert.pem"
        cp "$dir/agent/tls/agent.key" "$p/libvirt/private/${role}key.pem"
        cp "$dir/agent/tls/agent.crt" "$p/qemu/$role-cert.pem"
        cp "$dir/agent/tls/agent.key" "$p/qemu/$role-key.pem"
    done
    cp "$dir/agent/tls/cluster-ca.crt" "$p/qemu/ca-cert.pem"
    chmod 0600 "$p"/libvirt/private/*.pem "$p"/qemu/*-key.pem
}

write_agent_config() {
    local h=$1 dir="$TB/$1" addr extra=""
    addr=$(cat "$dir/address")
    [ -n "${GUEST_CPUS:-}" ] && extra=",
  \"guestCPUs\": \"$GUEST_CPUS\""
    cat >"$dir/agent.json" <<EOF
{
  "listen": "$addr",
  "port": 7443,
  "libvirtURI": "qemu:///system",
  "accelerator": "tcg",
  "hostName": "$h",
  "dataDir": "$dir/agent",
  "consoleLogDir": "/var/log/libvirt/qemu",
  "shutdownTimeoutSeconds": 30,
  "tlsSubjectAltNames": ["$addr", "$h"],
  "templateDirs": ["$ROOT/guest/out"],
  "diskDirs": ["$TB", "/var/lib/libvirt/images"]$extra
}
EOF
}

make_wan() { # SITES: routers r<s> at 10.250.s.253, linked pairwise to r1 through delayed taps
    local m=$1 s
    for s in $(seq 1 "$m"); do
        ip netns add "vs-r$s"
        ip link add "vs-r$s" type veth peer name lan netns "vs-r$s"
        ip link set "vs-r$s" master "vsbr$s" up
        ip -n "vs-r$s" link set lo up
        ip -n "vs-r$s" link set lan up
        ip -n "vs-r$s" addr add "10.250.$s.253/24" dev lan
        ip netns exec "vs-r$s" sysctl -qw net.ipv4.ip_forward=1
    done
    # Site s (s >= 2) reaches site 1 over a point-to-point WAN link 10.250.0.(4s)/30 through the relay.
    for s in $(seq 2 "$m"); do
        local a="10.250.0.$((4 * s + 1))" b="10.250.0.$((4 * s + 2))"
        python3 "$ROOT/scripts/wan-relay.py" --ns-a "vs-r1" --tap-a "wan$s" --ns-b "vs-r$s" --tap-b "wan1" \
            --delay-ms "$WAN_DELAY_MS" --pidfile "$TB/wan$s.pid" </dev/null >"$TB/wan$s.log" 2>&1 &
        wait_for 10 "WAN relay $s" ip -n "vs-r$s" link show wan1
        wait_for 10 "WAN relay $s" ip -n "vs-r1" link show "wan$s"
        ip -n vs-r1 addr add "$a/30" dev "wan$s"
        ip -n vs-r1 link set "wan$s" up
        ip -n "vs-r$s" addr add "$b/30" dev wan1
        ip -n "vs-r$s" link set wan1 up
        tc -n vs-r1 qdisc add dev "wan$s" root tbf rate "$WAN_RATE" burst 64kb latency 100ms
        tc -n "vs-r$s" qdisc add dev wan1 root tbf rate "$WAN_RATE" burst 64kb latency 100ms
        ip -n "vs-r$s" route add 10.250.0.0/16 via "$a"
        ip -n vs-r1 route add "10.250.$s.0/24" via "$b"
    done
}

up() {
    local n=${1:-2} m=${2:-1} i s
    [ "$n" -ge 1 ] && [ "$n" -le 50 ] || { log "HOSTS must be between 1 and 50"; exit 2; }
    [ "$m" -ge 1 ] && [ "$m" -le 8 ] && [ "$m" -le "$n" ] || { log "SITES must be between 1 and min(8, HOSTS)"; exit 2; }
    if [ -e "$TB/hosts" ]; then
        log "a testbed is already up ($(cat "$TB/hosts")); run 'make testbed-down' first"
        exit 1
    fi
    mkdir -p "$TB"
    : >"$TB/hosts"
    trap 'log "setup failed; tearing down"; down; exit 1' ERR
    # Root namespace addresses on every bridge first: every packet to a test host stays here.
    for s in $(seq 1 "$m"); do
        ip link add "vsbr$s" type bridge
        ip addr add "10.250.$s.254/24" dev "vsbr$s"
        ip link set "vsbr$s" up
        echo "vsbr$s" >>"$TB/bridges"
        ip route get "10.250.$s.1" | grep -q "dev vsbr$s" || { log "route to 10.250.$s.0/24 is not local"; false; }
    done
    [ "$m" -gt 1 ] && make_wan "$m"
    make_ca
    for i in $(seq 1 "$n"); do
        s=$(site_of "$i" "$n" "$m")
        local gw=""
        [ "$m" -gt 1 ] && gw="10.250.$s.253"
        make_host "h$i" "10.250.$s.$i" "$s" "$gw"
        echo "h$i" >>"$TB/hosts"
    done
    for i in $(seq 1 "$n"); do
        write_agent_config "h$i"
        start_agent "h$i"
    done
    start_controller "$n" "$m"
    trap - ERR
    echo "$m" >"$TB/sites"
    status
}

run_controller() {
    local dir="$TB/controller"
    # exec: $! must be the controller itself, not a shell around it.
    (eval "exec $(cat "$dir/controller.cmd")") </dev/null >>"$dir/controller.log" 2>&1 &
    echo $! >"$dir/controller.pid"
    wait_for 30 "controller" curl -sf --cacert "$dir/tls/controller-ca.crt" https://10.250.1.254:8443/healthz
}

# Stops the controller (SIGKILL with --kill: no chance to finish anything) and starts it again on
# the same database.
restart_controller() {
    local dir="$TB/controller" sig=TERM pid
    [ "${1:-}" = "--kill" ] && sig=KILL
    pid=$(cat "$dir/controller.pid")
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    # One that does not stop in 10 s is killed: the new one needs its port.
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    run_controller
}

# The controller in the root namespace on 10.250.1.254:8443 (mutual TLS with the agents through the cluster CA); the
# testbed's hosts registered through a manifest; the CLI configured for it.
start_controller() {
    local n=$1 m=$2 dir="$TB/controller"
    [ -x "$CONTROLLER" ] || { log "no controller binary at $CONTROLLER"; return 1; }
    mkdir -p "$dir"
    # The testbed power driver's script is the controller's own setting, never a manifest's.
    (umask 022; printf '{"testbedScript": "%s"}\n' "$ROOT/scripts/testbed.sh" >"$dir/power.json")
    printf '%q ' "$CONTROLLER" --listen 10.250.1.254 --port 8443 --database "${VSPHERE_TESTBED_DATABASE:-$dir/state.db}" --data-dir "$dir" \
        --reconcile-interval 1 --power-config "$dir/power.json" >"$dir/controller.cmd"
    run_controller
    # The CLI authenticates with the first admin's token, which the controller wrote at its first start.
    for _ in $(seq 50); do [ -s "$dir/admin.token" ] && break; sleep 0.1; done
    (umask 077; printf '{"server": "https://10.250.1.254:8443", "ca": "%s", "tokenFile": "%s"}\n' \
        "$dir/tls/controller-ca.crt" "$dir/admin.token" >"$TB/ctl.json")
    if [ "$(realpath -m "$CTL_CONFIG")" != "$(realpath -m "$TB/ctl.json")" ]; then
        mkdir -p "$(dirname "$CTL_CONFIG")"
        cp "$TB/ctl.json" "$CTL_CONFIG"
    fi
    # A directory every host sees at the same path: the testbed's shared storage pool.
    mkdir -p "$TB/shared"
    python3 - "$n" "$m" "$TB/shared" "$ROOT/scripts/testbed.sh" >"$TB/cluster.json" <<'PY'
import json, sys
n, m, shared, script = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
per = (n + m - 1) // m
hosts = []
for i in range(1, n + 1):
    s = (i - 1) // per + 1
    hosts.append({"name": f"h{i}", "site": f"dc{s}", "agent": f"https://10.250.{s}.{i}:7443",
                  "power": {"driver": "testbed", "host": f"h{i}"}})
# Migration streams travel over plain TCP here (libvirtd listens on tcp only on the testbed), and the
# shared pool is a local directory every host sees, which libvirt cannot verify as shared.
print(json.dumps({"apiVersion": "vsphere/v1", "kind": "Cluster", "metadata": {"name": "testbed"},
                  "settings": {"migration": {"transport": "tcp", "sharedStorageUnverifiable": True}},
                  "sites": [{"name": f"dc{s}"} for s in range(1, m + 1)], "hosts": hosts,
                  "storagePools": [{"name": "shared", "type": "shared", "path": shared}],
                  "networks": [{"name": "lan", "type": "bridge", "bridge": "br0"}]}, indent=2))
PY
    VSPHERE_CONFIG="$TB/ctl.json" "$CTL" apply -f "$TB/cluster.json" >/dev/null
}

kill_ns_pids() { # NS SIGNAL
    local pids
    pids=$(ip netns pids "$1" 2>/dev/null || true)
    [ -n "$pids" ] && kill "-$2" $pids 2>/dev/null || true
}

down() {
    local h ns
    if [ -d "$TB" ]; then
        if [ -e "$TB/controller/controller.pid" ]; then
            local cpid
            cpid=$(cat "$TB/controller/controller.pid")
            kill -TERM "$cpid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$cpid" 2>/dev/null || true
        fi
        for f in "$TB"/*/agent.pid; do
            [ -e "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true
        done
        for f in "$TB"/wan*.pid; do
            [ -e "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true
        done
    fi
    # Guests first, through their libvirtd (so libvirt cleans up their cgroups), then every process.
    if [ -d "$TB" ]; then
        for f in "$TB"/*/holder.pid; do
            [ -e "$f" ] || continue
            h=$(basename "$(dirname "$f")")
            kill -0 "$(cat "$f")" 2>/dev/null || continue
            for d in $(timeout 10 nsenter -t "$(cat "$f")" -n -m -u -C -- virsh -c qemu:///system list --name 2>/dev/null); do
                timeout 10 nsenter -t "$(cat "$f")" -n -m -u -C -- virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true
            done
        done
    fi
    for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^vs-/ {print $1}'); do
        kill_ns_pids "$ns" TERM
    done
    sleep 0.5
    for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^vs-/ {print $1}'); do
        kill_ns_pids "$ns" KILL
        ip netns del "$ns" 2>/dev/null || true
    done
    for br in $(ip -o link show type bridge 2>/dev/null | awk -F': ' '{print $2}' | grep '^vsbr' || true); do
        ip link del "$br" 2>/dev/null || true
    done
    for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep '^vs-' || true); do
        ip link del "$l" 2>/dev/null || true
    done
    # The hosts' cgroup subtrees (with what guests that were killed rather than stopped left there).
    remove_cgroups
    # The mount point for the hosts' /etc/pki, if the testbed made it.
    [ -e "$TB/made-etc-pki" ] && rmdir /etc/pki 2>/dev/null || true
    # Processes that were just killed may still be closing files under $TB.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        rm -rf "$TB" 2>/dev/null && break
        sleep 0.5
    done
    [ ! -e "$TB" ] || { log "cannot remove $TB"; return 1; }
    log "down"
}

status() {
    [ -e "$TB/hosts" ] || { echo "no testbed"; return 0; }
    if [ -e "$TB/ctl.json" ]; then
        echo "controller: https://10.250.1.254:8443 (CLI config $TB/ctl.json)"
    fi
    printf '%-6s %-14s %-6s %-8s %s\n' HOST ADDRESS SITE AGENT LIBVIRTD
    for h in $(cat "$TB/hosts"); do
        local a s ag lv
        a=$(cat "$TB/$h/address")
        s=$(cat "$TB/$h/site")
        ag=down
        agent_curl "https://$a:7443/healthz" >/dev/null 2>&1 && ag=up
        lv=down
        in_host "$h" virsh -c qemu:///system version >/dev/null 2>&1 && lv=up
        printf '%-6s %-14s %-6s %-8s %s\n' "$h" "$a" "dc$s" "$ag" "$lv"
    done
}

restart_libvirtd() {
    local h=$1
    in_host "$h" sh -c 'kill $(cat /run/libvirtd.pid) 2>/dev/null; i=0; while [ -e /run/libvirtd.pid ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done'
    in_host "$h" libvirtd -d --listen </dev/null >>"$TB/$h/libvirtd.log" 2>&1
    wait_for 30 "libvirtd on $h" in_host "$h" virsh -c qemu:///system version
}

power() { # HOST on|off|status
    local h=$1 pid
    [ -e "$TB/$h/holder.pid" ] || { log "no host $h"; return 3; }
    case "$2" in
        off)
            if [ -e "$TB/$h/agent.pid" ]; then
                pid=$(cat "$TB/$h/agent.pid")
                kill -TERM "$pid" 2>/dev/null || true
                for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -KILL "$pid" 2>/dev/null || true
                rm -f "$TB/$h/agent.pid"
            fi
            # A power cut for whatever still runs there: guests, then the daemons.
            in_host "$h" sh -c 'for f in /run/libvirt/qemu/*.pid; do [ -e "$f" ] && kill -KILL "$(cat "$f")"; done; \
                for d in libvirtd virtlogd; do [ -e /run/$d.pid ] && kill -TERM "$(cat /run/$d.pid)"; done; \
                i=0; while { [ -e /run/libvirtd.pid ] || [ -e /run/virtlogd.pid ]; } && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
                rm -f /run/libvirtd.pid /run/virtlogd.pid' 2>/dev/null || true
            echo off >"$TB/$h/power"
            log "$h powered off"
            ;;
        on)
            if [ "$(cat "$TB/$h/power" 2>/dev/null || echo on)" = on ] && [ -e "$TB/$h/agent.pid" ] && kill -0 "$(cat "$TB/$h/agent.pid")" 2>/dev/null; then
                log "$h is on"
                return 0
            fi
            # Whatever of it still runs stays; the rest starts.
            in_host "$h" sh -c '[ -e /run/virtlogd.pid ] && kill -0 "$(cat /run/virtlogd.pid)"' 2>/dev/null \
                || in_host "$h" virtlogd -d </dev/null >/dev/null 2>&1
            if ! in_host "$h" virsh -c qemu:///system version >/dev/null 2>&1; then
                in_host "$h" libvirtd -d --listen </dev/null >>"$TB/$h/libvirtd.log" 2>&1
                wait_for 30 "libvirtd on $h" in_host "$h" virsh -c qemu:///system version
            fi
            start_agent "$h"
            echo on >"$TB/$h/power"
            log "$h powered on"
            ;;
        status)
            cat "$TB/$h/power" 2>/dev/null || echo on
            ;;
        *) log "power: use on, off or status"; return 2 ;;
    esac
}

restart_agent() { # HOST [--kill]: stop the host's agent (SIGTERM, or SIGKILL) and start it again
    local h=$1 sig=TERM pid
    [ "${2:-}" = --kill ] && sig=KILL
    pid=$(cat "$TB/$h/agent.pid")
    kill -"$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    start_agent "$h"
}

cmd=${1:-status}
shift || true
case "$cmd" in
    up) up "$@" ;;
    down) down ;;
    status) status ;;
    # exec, not a child: the caller's pid becomes CMD's (tests signal it).
    exec) h=$1; shift; pid=$(holder "$h"); exec sh -c 'for f in /sys/fs/cgroup/*/vs-'"$h"'/cgroup.procs; do echo $$ >"$f"; done; exec "$@"' \
        in_host nsenter -t "$pid" -n -m -u -C -- "$@" ;;
    restart-libvirtd) restart_libvirtd "$1" ;;
    restart-controller) restart_controller "${1:-}" ;;
    restart-agent) restart_agent "$1" "${2:-}" ;;
    power) power "$1" "${2:-status}" ;;
    stop-libvirtd) in_host "$1" sh -c 'kill $(cat /run/libvirtd.pid)' ;;
    start-libvirtd) in_host "$1" libvirtd -d --listen </dev/null >>"$TB/$1/libvirtd.log" 2>&1 ;;
    *) echo "usage: $0 up HOSTS [SITES] | down | status | exec HOST CMD... | restart-libvirtd HOST | restart-agent HOST [--kill] | restart-controller [--kill] | power HOST on|off|status" >&2; exit 2 ;;
esac
