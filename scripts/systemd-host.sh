#!/usr/bin/env bash
# A real systemd host for the tests on a machine whose PID 1 is not systemd: a Debian 12 container
# under systemd-nspawn with systemd as its PID 1, machined, libvirtd and QEMU (shared/FACTS.md, "A real
# systemd host inside this machine").
#
#   systemd-host.sh image                    build (once) and cache the root image; rebuilt when the
#                                            package list or the recipe changes
#   systemd-host.sh up NAME [--bind-ro SRC:DST]... [--private-network]
#                                            boot a clean (volatile overlay) container NAME from the
#                                            image in the background; prints its PID 1 (as seen here);
#                                            --private-network: its own network namespace with only
#                                            loopback (what runs inside cannot touch this machine's)
#   systemd-host.sh exec NAME CMD...         run CMD inside (all its namespaces, its cgroups); exit status
#                                            passed through
#   systemd-host.sh shell NAME               an interactive shell inside
#   systemd-host.sh down [NAME]              power off NAME (every container without NAME) and remove
#                                            everything it left: processes, cgroups, state (idempotent)
#   systemd-host.sh status                   list the containers
#
# Without --private-network the container shares this machine's network namespace: its ports are this
# machine's ports, and libvirt's default network is off in the image so that nothing in it makes bridges
# or NAT rules by itself. With it (as make test runs it), the container has only its own loopback and
# whatever runs inside (the agent's bridges and VXLAN devices) stays there. Everything else is its own. nspawn runs with --register=no
# --keep-unit (there is no host systemd) from a cgroup of its own in every hierarchy (a child of the
# caller's cgroup, so the container stays inside whatever limits the caller runs under); the
# container's cgroup mounts are made writable and systemd re-executed, so that resource control is
# enforced and libvirt can place guests.
set -euo pipefail

IMAGE=${VSPHERE_SYSTEMD_IMAGE:-/var/cache/vsphere/systemd-host/bookworm}
STATE=${VSPHERE_SYSTEMD_HOST_DIR:-/run/vsphere-systemd-host}
SUITE=bookworm
# Bump when the image customisation below changes: the stamp then no longer matches and image rebuilds.
RECIPE=2
PACKAGES=(
    systemd systemd-sysv systemd-container dbus
    libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt0 libxml2
    qemu-system-x86 qemu-utils
    iproute2 procps python3 ca-certificates curl openssl
)
BOOT_TIMEOUT=${VSPHERE_SYSTEMD_BOOT_TIMEOUT:-120}
CONTAINER_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "systemd-host: $*" >&2; }
die() { log "$*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------------------------------------- image

# The Debian mirror (and security mirror) this machine's apt uses, from one-line or deb822 sources;
# else deb.debian.org.
host_mirror() { # debian | debian-security
    local f uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk '
            /^deb[ \t]/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) print $i }
            /^URIs:/    { for (i = 2; i <= NF; i++) print $i }' "$f" | grep -E "/$1/?\$" | head -n1) || true
        if [ -n "$uri" ]; then
            echo "${uri%/}"
            return
        fi
    done
    echo "http://deb.debian.org/$1"
}

stamp_text() {
    printf 'suite=%s\nrecipe=%s\npackages=%s\n' "$SUITE" "$RECIPE" "${PACKAGES[*]}"
}

# Unmounts whatever is mounted at or below DIR (a failed debootstrap can leave proc and sys mounted).
unmount_under() {
    local dir m
    dir=$(realpath -m "$1")
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m" || true; done
}

remove_tree() { # DIR: a root file system tree, never crossing into a mount
    [ -e "$1" ] || return 0
    unmount_under "$1"
    rm -rf --one-file-system "$1"
}

build_failed() { # DIR STEP
    tail -n 20 "$IMAGE.log" >&2
    remove_tree "$1"
    die "$2 failed (log: $IMAGE.log)"
}

cmd_image() {
    local t0 tmp mirror security missing=() p
    t0=$(now)
    [ "$(id -u)" = 0 ] || die "run as root"
    if [ -d "$IMAGE" ] && [ "$(cat "$IMAGE.stamp" 2>/dev/null)" = "$(stamp_text)" ]; then
        log "image $IMAGE is up to date"
        return 0
    fi
    [ -z "$(running_names)" ] || die "containers are up ($(running_names | paste -sd' ')): run down first"
    for p in debootstrap systemd-container; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    fi
    mirror=$(host_mirror debian)
    security=$(host_mirror debian-security)
    tmp=$IMAGE.new
    remove_tree "$tmp"
    mkdir -p "$(dirname "$IMAGE")"
    # 1. A minimal Debian with systemd. debootstrap cannot resolve virtual packages (polkitd, which
    #    libvirt needs, depends on default-logind | logind), so the rest comes through apt.
    log "debootstrap $SUITE from $mirror into $tmp (log: $IMAGE.log)"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus "$SUITE" "$tmp" "$mirror" \
        >"$IMAGE.log" 2>&1 || build_failed "$tmp" debootstrap
    # 2. The suites this machine uses, then the packages (no recommends); no service starts meanwhile.
    printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
        "$mirror" "$SUITE" "$mirror" "$SUITE" "$security" "$SUITE" >"$tmp/etc/apt/sources.list"
    printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
    chmod +x "$tmp/usr/sbin/policy-rc.d"
    mount -t proc proc "$tmp/proc"
    log "apt-get install ${PACKAGES[*]}"
    if ! { chroot "$tmp" apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive chroot "$tmp" apt-get install -y -q --no-install-recommends \
            "${PACKAGES[@]}"; } >>"$IMAGE.log" 2>&1; then
        build_failed "$tmp" "apt-get install"
    fi
    chroot "$tmp" apt-get clean
    umount "$tmp/proc"
    rm -f "$tmp/usr/sbin/policy-rc.d"

    # QEMU as root without a security driver, as on this sandbox's own libvirt (scripts/deps.sh).
    printf '\n# vsphere: sandbox settings\nuser = "root"\ngroup = "root"\nsecurity_driver = "none"\n' \
        >>"$tmp/etc/libvirt/qemu.conf"
    # The container may share this machine's network namespace: libvirt's default network (a bridge,
    # NAT and dnsmasq) must not start by itself there.
    rm -f "$tmp/etc/libvirt/qemu/networks/autostart/default.xml"
    systemctl --root="$tmp" enable libvirtd.service virtlogd.service virtlogd.socket >/dev/null 2>&1
    # A power-off waits at most 10 s for guests that ignore the ACPI power button (Debian: 300 s).
    printf 'ON_SHUTDOWN=shutdown\nSHUTDOWN_TIMEOUT=10\n' >>"$tmp/etc/default/libvirt-guests"
    # A fresh machine ID on every boot; the hostname is the container's name (not this machine's, which
    # debootstrap copied); no getty on nspawn's console (its output goes to the log).
    : >"$tmp/etc/machine-id"
    rm -f "$tmp/etc/hostname"
    systemctl --root="$tmp" mask console-getty.service >/dev/null 2>&1

    remove_tree "$IMAGE"
    mv "$tmp" "$IMAGE"
    stamp_text >"$IMAGE.stamp"
    log "image $IMAGE built in $(since "$t0") s ($(du -sh --one-file-system "$IMAGE" | cut -f1))"
}

# ------------------------------------------------------------------------------------------ containers

alive() { # PID COMM: the process exists, is still that program and is not a zombie
    local stat
    [ -n "$1" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] || return 1
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

nspawn_pid() { cat "$STATE/$1/nspawn.pid" 2>/dev/null || true; }

running_names() {
    local d
    for d in "$STATE"/*/; do
        [ -d "$d" ] || continue
        d=$(basename "$d")
        alive "$(nspawn_pid "$d")" systemd-nspawn && echo "$d"
    done
    return 0
}

leader() { # NAME -> the container's PID 1, or fail
    local pid
    pid=$(cat "$STATE/$1/leader.pid" 2>/dev/null) || die "$1 is not up"
    alive "$pid" systemd || die "$1 is not up (its PID 1, $pid, is gone)"
    echo "$pid"
}

# The caller's cgroup directory in every hierarchy mounted under /sys/fs/cgroup.
caller_cgroups() {
    local ctrl path mnt
    while IFS=: read -r _ ctrl path; do
        case $ctrl in
        '') mnt=/sys/fs/cgroup/unified; [ -e /sys/fs/cgroup/cgroup.controllers ] && mnt=/sys/fs/cgroup ;;
        name=*) mnt=/sys/fs/cgroup/${ctrl#name=} ;;
        *) mnt=/sys/fs/cgroup/$ctrl ;;
        esac
        [ -e "$mnt/cgroup.procs" ] && echo "${mnt}${path%/}"
    done </proc/self/cgroup
}

make_cgroups() { # NAME: a cgroup of its own in every hierarchy, listed in STATE/NAME/cgroups
    local parent c
    caller_cgroups | while read -r parent; do
        c=$parent/vsphere-systemd-host-$1
        mkdir -p "$c"
        if [ -e "$parent/cpuset.cpus" ]; then # cpuset needs its cpus and mems before it takes a task
            cat "$parent/cpuset.cpus" >"$c/cpuset.cpus"
            cat "$parent/cpuset.mems" >"$c/cpuset.mems"
        fi
        echo "$c"
    done >"$STATE/$1/cgroups"
}

# Every process in NAME's cgroups or in its PID namespace.
container_pids() {
    local d=$STATE/$1 ns p
    if [ -f "$d/cgroups" ]; then
        while read -r c; do
            [ -d "$c" ] && find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null
        done <"$d/cgroups"
    fi
    ns=$(cat "$d/pidns" 2>/dev/null || true)
    if [ -n "$ns" ]; then
        for p in /proc/[0-9]*; do
            [ "$(readlink "$p/ns/pid" 2>/dev/null)" = "$ns" ] && echo "${p#/proc/}"
        done
    fi
    return 0
}

# Runs CMD in the container's cgroups (the root of its tree, payload/ where nspawn made one) and all its
# namespaces: the shell joins the cgroups, then execs nsenter, which execs CMD.
in_container() { # NAME CMD...
    local name=$1 pid
    shift
    pid=$(leader "$name")
    # A clean environment: nothing of the caller's (a test runner's VSPHERE_CONFIG, say) leaks inside.
    exec env -i PATH=$CONTAINER_PATH HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" sh -c '
        while read -r c; do
            if [ -d "$c/payload" ]; then c=$c/payload; fi
            echo $$ >"$c/cgroup.procs"
        done <"$1"
        shift
        exec "$@"' in_container "$STATE/$name/cgroups" nsenter -t "$pid" -a -- "$@"
}

cmd_up() {
    local name=${1:-} t0 d binds=() pid leader_pid c i state
    [ -n "$name" ] || die "usage: up NAME [--bind-ro SRC:DST]... [--private-network]"
    shift
    [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9-]*$ ]] || die "bad container name: $name"
    while [ $# -gt 0 ]; do
        case $1 in
        --bind-ro) [ $# -ge 2 ] || die "--bind-ro needs SRC:DST"; binds+=("--bind-ro=$2"); shift 2 ;;
        --bind-ro=*) binds+=("$1"); shift ;;
        --private-network) binds+=("--private-network"); shift ;;
        *) die "unknown option: $1" ;;
        esac
    done
    [ "$(id -u)" = 0 ] || die "run as root"
    [ -f "$IMAGE.stamp" ] && [ -x "$IMAGE/lib/systemd/systemd" ] || die "no image at $IMAGE: run $0 image"
    t0=$(now)
    d=$STATE/$name
    if alive "$(nspawn_pid "$name")" systemd-nspawn; then die "$name is already up"; fi
    teardown "$name" # leftovers of an earlier run
    mkdir -p "$d"
    make_cgroups "$name"
    trap "on_up_exit $name" EXIT # name is [A-Za-z0-9-]: safe to expand now

    # nspawn in its own session, from its cgroups; its own output (the container's console) to the log.
    setsid sh -c 'while read -r c; do echo $$ >"$c/cgroup.procs"; done <"$1"; shift; exec "$@"' \
        up "$d/cgroups" systemd-nspawn --boot --directory="$IMAGE" --volatile=overlay \
        --machine="$name" --register=no --keep-unit --console=read-only "${binds[@]}" \
        </dev/null >"$d/nspawn.log" 2>&1 &
    pid=$!
    echo "$pid" >"$d/nspawn.pid"

    # The container's PID 1: the child of nspawn, once it has become systemd (its mounts are set up).
    leader_pid=
    for i in $(seq 200); do
        for c in $(pgrep -P "$pid" || true); do
            alive "$c" systemd && leader_pid=$c
        done
        [ -z "$leader_pid" ] || break
        [ -e "/proc/$pid" ] || break
        sleep 0.05
    done
    [ -n "$leader_pid" ] || boot_failed "$name" "systemd-nspawn did not start the container's systemd"
    echo "$leader_pid" >"$d/leader.pid"
    readlink "/proc/$leader_pid/ns/pid" >"$d/pidns"

    # nspawn mounts the v1 hierarchies read-only inside: limits would show but not be enforced, and
    # libvirt could not make its cgroups. Make them writable, and have systemd start over on them.
    nsenter -t "$leader_pid" -a -- sh -c '
        for m in $(findmnt -rn -t cgroup,cgroup2 -o TARGET); do mount -o remount,bind,rw "$m"; done'
    for i in $(seq 300); do
        nsenter -t "$leader_pid" -a -- systemctl daemon-reexec >/dev/null 2>&1 && break
        alive "$leader_pid" systemd || boot_failed "$name" "the container's systemd exited"
        [ "$i" -lt 300 ] || boot_failed "$name" "systemctl daemon-reexec did not succeed"
        sleep 0.1
    done

    state=$(timeout "$BOOT_TIMEOUT" nsenter -t "$leader_pid" -a -- \
        systemctl is-system-running --wait 2>/dev/null) || true
    case $state in
    running) ;;
    degraded)
        log "$name is degraded; failed units:"
        nsenter -t "$leader_pid" -a -- systemctl --failed --no-legend --plain >&2 || true
        ;;
    *) boot_failed "$name" "$name did not boot within $BOOT_TIMEOUT s (state: ${state:-none})" ;;
    esac
    up_done=1
    log "$name is $state in $(since "$t0") s (PID 1 here: $leader_pid, nspawn $pid, log $d/nspawn.log)"
    echo "$leader_pid"
}

boot_failed() { # NAME MESSAGE
    log "$2; last lines of $STATE/$1/nspawn.log:"
    tail -n 30 "$STATE/$1/nspawn.log" >&2 || true
    exit 1 # on_up_exit removes it
}

up_done=
on_up_exit() { # NAME: up stopped half-way (an unexpected error): remove what it made
    local rc=$?
    [ -z "$up_done" ] || return 0
    log "up $1 failed"
    teardown "$1"
    exit $((rc == 0 ? 1 : rc))
}

still_up() { alive "$1" systemd-nspawn || alive "$2" systemd; } # NSPAWN LEADER

# Powers NAME off and removes everything it left.
teardown() {
    local name=$1 d=$STATE/$1 pid leader_pid i c left
    [ -d "$d" ] || return 0
    pid=$(nspawn_pid "$name")
    leader_pid=$(cat "$d/leader.pid" 2>/dev/null || true)
    # SIGRTMIN+4 asks systemd to power off; nspawn exits when its PID 1 does (PID 1 may outlive a killed
    # nspawn: it is then waited for alone).
    if still_up "$pid" "$leader_pid"; then
        if alive "$leader_pid" systemd; then kill -s RTMIN+4 "$leader_pid" 2>/dev/null || true; fi
        for i in $(seq 200); do
            still_up "$pid" "$leader_pid" || break
            sleep 0.1
        done
        if still_up "$pid" "$leader_pid"; then
            log "$name did not power off in 20 s: killing it"
            if alive "$pid" systemd-nspawn; then kill -KILL "$pid" 2>/dev/null || true; fi
            if alive "$leader_pid" systemd; then kill -KILL "$leader_pid" 2>/dev/null || true; fi
        fi
    fi
    # Whatever is left in its cgroups or PID namespace (when PID 1 goes the kernel kills the rest).
    for i in $(seq 50); do
        left=$(container_pids "$name" | sort -u)
        [ -n "$left" ] || break
        [ "$i" -lt 50 ] || { log "processes left in $name: $(echo $left)"; break; }
        kill -KILL $left 2>/dev/null || true
        sleep 0.1
    done
    # Its cgroups, deepest first (systemd's and libvirt's leftovers included).
    if [ -f "$d/cgroups" ]; then
        while read -r c; do
            [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
            [ ! -d "$c" ] || log "cgroup left: $c"
        done <"$d/cgroups"
    fi
    # nspawn's overlay lives in its own mount namespace; nothing of it may show here.
    if awk '{print $4, $5}' /proc/self/mountinfo | grep -F -e "$IMAGE" -e "$d" >&2; then
        log "mounts left for $name (above)"
    fi
    rm -rf "/run/systemd/nspawn/propagate/$name" "$d"
    tidy_nspawn
}

# nspawn's directories and the image's lock once no container uses them (a killed nspawn leaves them).
tidy_nspawn() {
    [ -z "$(running_names)" ] || return 0
    rm -f "/run/systemd/nspawn/locks/inode-$(stat -c %d:%i "$IMAGE" 2>/dev/null)"
    rmdir /run/systemd/nspawn/locks /run/systemd/nspawn/propagate /run/systemd/nspawn "$STATE" \
        2>/dev/null || true
}

cmd_down() {
    local name
    if [ $# -gt 0 ]; then
        teardown "$1"
    else
        for name in "$STATE"/*/; do
            [ -d "$name" ] && teardown "$(basename "$name")"
        done
    fi
    tidy_nspawn
}

cmd_status() {
    local d name pid
    for d in "$STATE"/*/; do
        [ -d "$d" ] || continue
        name=$(basename "$d")
        pid=$(nspawn_pid "$name")
        if alive "$pid" systemd-nspawn; then
            echo "$name up nspawn=$pid leader=$(cat "$d/leader.pid" 2>/dev/null)"
        else
            echo "$name down (state left: $d)"
        fi
    done
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
image) cmd_image ;;
up) cmd_up "$@" ;;
exec)
    [ $# -ge 2 ] || die "usage: exec NAME CMD..."
    in_container "$@"
    ;;
shell)
    [ $# -eq 1 ] || die "usage: shell NAME"
    in_container "$1" bash -l
    ;;
down) cmd_down "$@" ;;
status) cmd_status ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
