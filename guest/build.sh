#!/usr/bin/env bash
# Builds the tiny test guest from Debian packages only:
#   OUT/vmlinuz        Debian's kernel (bzImage, direct kernel boot)
#   OUT/initrd.img     busybox initramfs with the virtio, ACPI button and ext4 modules it needs
#   OUT/disk.qcow2     the same user space on an ext4 root disk (boot with vs.root=/dev/vda)
# The guest prints "VSPHERE-GUEST-READY" on its serial console once up, configures its NIC from
# vs.ip=ADDR/PREFIX (vs.gw=GW), answers ping, powers off on the ACPI power button, and with
# vs.dirty=MIB[:MIBPS] rewrites MIB MiB of non-zero data in tmpfs in a loop (at MIBPS MiB/s, 0 = flat out);
# vs.ping=ADDR[,ADDR] pings each 5 times a second (replies on the console), vs.mac=MAC sends from a forged MAC.
set -euo pipefail

OUT=${1:-$(dirname "$0")/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
stamp="$OUT/.stamp"
if [ -f "$stamp" ] && [ "$stamp" -nt "$here/build.sh" ] && [ "$stamp" -nt "$here/init" ]; then
    echo "guest image up to date in $OUT"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$kpkg" ] || { echo "guest: cannot resolve linux-image-amd64 (run apt-get update)" >&2; exit 1; }
(cd "$work" && apt-get download -q "$kpkg" >/dev/null)
dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")
moddir="$work/kernel/lib/modules/$kver"

root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,newroot,lib/modules}
cp /bin/busybox "$root/bin/busybox"
for applet in sh mount umount insmod ip ping sleep cat echo mkdir dd hostname poweroff reboot switch_root acpid setsid cttyhack ls sync usleep; do
    ln -sf busybox "$root/bin/$applet"
done
ln -sf ../bin/busybox "$root/sbin/init"
install -m 0755 "$here/init" "$root/init"

# Modules and their dependencies, dependencies first.
declare -A seen=()
order=()
add_module() {
    local name=$1 path dep
    [ -n "${seen[$name]:-}" ] && return 0
    seen[$name]=1
    path=$(find "$moddir/kernel" -name "$name.ko" -print -quit)
    [ -n "$path" ] || { echo "guest: module $name not found" >&2; exit 1; }
    for dep in $(busybox strings "$path" | sed -n "s/^depends=//p" | head -n1 | tr ',' ' '); do
        add_module "$dep"
    done
    cp "$path" "$root/lib/modules/"
    order+=("$name.ko")
}
for m in virtio_pci virtio_net virtio_blk virtio_balloon button evdev crc32c_generic ext4; do add_module "$m"; done
printf '%s\n' "${order[@]}" > "$root/lib/modules/order"
# busybox acpid maps the power button to the action PWRF/00000080 under its config directory.
mkdir -p "$root/etc/acpi/PWRF" "$root/var/log"
printf '#!/bin/sh\necho "VSPHERE-GUEST-POWEROFF acpi" > /dev/ttyS0\nsync\npoweroff -f\n' > "$root/etc/acpi/PWRF/00000080"
chmod 0755 "$root/etc/acpi/PWRF/00000080"

cp "$work/kernel/boot/vmlinuz-$kver" "$OUT/vmlinuz"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -6) > "$OUT/initrd.img"

# The disk variant: same user space on ext4, inside qcow2.
rm -f "$work/rootfs.ext4"
mke2fs -q -t ext4 -L vsguest -d "$root" "$work/rootfs.ext4" 64M
qemu-img convert -q -f raw -O qcow2 "$work/rootfs.ext4" "$OUT/disk.qcow2"

echo "$kver" > "$OUT/kernel-version"
touch "$stamp"
echo "guest image in $OUT: vmlinuz initrd.img disk.qcow2 (kernel $kver)"
