#!/usr/bin/env bash
# The process that holds a test host's namespaces open (started by testbed.sh inside the host's network
# namespace): testbed-holder.sh HOST DIR
#
# It joins the host's cgroup subtree (made by testbed.sh), then unshares mount, UTS and cgroup
# namespaces, so that the host sees that subtree as the root of every hierarchy; it mounts /sys and each
# cgroup hierarchy afresh, its own /run, and the host's libvirt directories; then it sleeps.
set -euo pipefail
h=$1 dir=$2

if [ "${3:-}" != inside ]; then
    for f in /sys/fs/cgroup/*/"vs-$h"/cgroup.procs; do echo $$ >"$f"; done
    # What to mount again inside: "TYPE DIR OPTIONS" of every cgroup hierarchy of the root namespace.
    awk '$3 == "cgroup" || $3 == "cgroup2" {print $3, $2, $4}' /proc/self/mounts >"$dir/cgroup-mounts"
    exec unshare -m -u -C --propagation private bash "$0" "$h" "$dir" inside
fi

mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755 tmpfs /sys/fs/cgroup
while read -r type path opts; do
    mkdir -p "$path"
    if [ "$type" = cgroup2 ]; then
        mount -t cgroup2 cgroup2 "$path"
    else
        # Keep the controller (or name=) options; drop rw and the time flags.
        opts=$(echo "$opts" | tr ',' '\n' | grep -v -E '^(rw|ro|relatime|noatime|nosuid|nodev|noexec)$' | paste -sd, -)
        mount -t cgroup -o "$opts" cgroup "$path"
    fi
done <"$dir/cgroup-mounts"
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/libvirt /run/lock
mount --bind "$dir/lib" /var/lib/libvirt
mount --bind "$dir/cache" /var/cache/libvirt
mount --bind "$dir/log" /var/log/libvirt
mount --bind "$dir/etc" /etc/libvirt
mount --bind "$dir/pki" /etc/pki
hostname "$h"
touch "$dir/ready"
exec sleep infinity
