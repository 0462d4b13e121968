#!/usr/bin/env bash
# Installs what the build, the tests, the demo and the testbed need on Debian 12, and configures
# libvirt for a machine without systemd as PID 1. Idempotent.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "deps: run as root" >&2; exit 1; }

packages=(
    libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev libxml2-dev
    qemu-system-x86 qemu-utils
    busybox-static cpio e2fsprogs
    iproute2 ebtables iptables libvirt-daemon-config-nwfilter iputils-ping util-linux procps curl openssl python3 python3-jsonschema pkg-config
    systemd python3-venv
    debootstrap systemd-container
    postgresql
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
fi
# The guest image needs the kernel package's name resolvable even when every package was present.
apt-cache show linux-image-amd64 >/dev/null 2>&1 || apt-get update -qq

# qemu.conf for a sandbox without the usual security setup (shared/FACTS.md); harmless elsewhere
# only where the operator agrees, so this runs only when systemd is not PID 1 (CI, containers).
if [ "$(cat /proc/1/comm 2>/dev/null)" != systemd ]; then
    conf=/etc/libvirt/qemu.conf
    if ! grep -q '^# vsphere: sandbox settings' "$conf"; then
        printf '\n# vsphere: sandbox settings\nuser = "root"\ngroup = "root"\nsecurity_driver = "none"\n' >>"$conf"
    fi
fi
# schemathesis (PyPI) for the API fuzzing in make test, in its own virtual environment.
if [ ! -x /opt/vsphere-tools/bin/schemathesis ]; then
    echo "deps: installing schemathesis into /opt/vsphere-tools"
    /usr/bin/python3 -m venv /opt/vsphere-tools
    /opt/vsphere-tools/bin/pip install -q "schemathesis==4.32.5"
fi
command -v swift >/dev/null || [ -x /opt/swift/usr/bin/swift ] || {
    echo "deps: Swift 6 is required (https://www.swift.org/install/linux/); not found in PATH or /opt/swift" >&2
    exit 1
}
echo "deps: ok"
