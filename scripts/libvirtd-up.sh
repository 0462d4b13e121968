#!/usr/bin/env bash
# Starts virtlogd and libvirtd in the root namespace when nothing (systemd) runs them. Idempotent.
set -euo pipefail
if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    systemctl start libvirtd virtlogd
    exit 0
fi
pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d
for _ in $(seq 100); do
    virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
    sleep 0.1
done
echo "libvirtd did not come up" >&2
exit 1
