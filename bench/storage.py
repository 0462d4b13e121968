#!/usr/bin/env python3
"""Benchmark storage (and the distributed switch under a migration).

1. Linked-clone provisioning, manifest to running VM: `vsphere-ctl apply --wait` of a VM whose root disk
   is `{pool: shared, from: guest disk.qcow2}` (the controller places it, the agent makes the qcow2
   overlay and defines and starts the domain) vs the same by hand: `qemu-img create -b` in the shared
   directory and `virsh create` of an equivalent domain XML on the same host. Alternating, ROUNDS
   rounds, medians; also until the guest prints its boot marker from the cloned disk.
2. Ping loss during live migration: a guest pinging another 5 times a second while the other moves
   between the hosts, on our VXLAN network through `vsphere-ctl vm migrate`, vs hand-made domains on
   the testbed's flat bridge moved by `virsh migrate --live --p2p`. Lost replies per migration.
Writes bench/results/storage.json."""
import json, os, re, statistics, subprocess, sys, time

TB = os.environ.get("VSPHERE_TESTBED", "/var/lib/vsphere-testbed")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST = os.path.join(ROOT, "guest", "out")
CTL = os.environ.get("VSPHERE_CTL", os.path.join(ROOT, ".build", "release", "vsphere-ctl"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
MIGRATIONS = int(os.environ.get("MIGRATIONS", "4"))
ENV = dict(os.environ, VSPHERE_CONFIG=f"{TB}/ctl.json")
ADDR = {h: open(f"{TB}/{h}/address").read().strip() for h in ("h1", "h2")}
SHARED = f"{TB}/shared"
TEMPLATE = f"{GUEST}/disk.qcow2"


def ctl(*args, check=True):
    r = subprocess.run([CTL, *args], capture_output=True, text=True, env=ENV)
    if check and r.returncode != 0:
        sys.exit(f"vsphere-ctl {' '.join(args)}: {r.stdout}{r.stderr}")
    return r


def virsh(host, *args, check=True):
    r = subprocess.run(["virsh", "-c", f"qemu+tcp://{ADDR[host]}/system", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"virsh {' '.join(args)}: {r.stdout}{r.stderr}")
    return r


def wait_for(what, pred, timeout=180, every=0.1):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    sys.exit(f"timed out waiting for {what}")


def apply(doc, name):
    path = f"{TB}/{name}.json"
    with open(path, "w") as f:
        json.dump(doc, f)
    ctl("apply", "-f", path, "--wait", "--timeout", "180")


def agent_console(host, vm):
    r = subprocess.run(["curl", "-s", "--cacert", f"{TB}/controller/pki/ca.crt", "--cert", f"{TB}/client/client.crt",
                        "--key", f"{TB}/client/client.key", f"https://{ADDR[host]}:7443/v1/vms/{vm}/console"],
                       capture_output=True, text=True)
    return r.stdout


def file_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def domain_xml(name, disk, console_log, bridge, cmdline, mac):
    """The hand-made peer: what an operator writes for the same guest (direct kernel boot, virtio)."""
    return f"""<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{GUEST}/vmlinuz</kernel><initrd>{GUEST}/initrd.img</initrd>
    <cmdline>{cmdline}</cmdline></os>
  <features><acpi/></features><on_poweroff>destroy</on_poweroff>
  <devices>
    {disk}
    <interface type='bridge'><mac address='{mac}'/><source bridge='{bridge}'/><model type='virtio'/></interface>
    <serial type='pty'><log file='{console_log}' append='on'/><target port='0'/></serial><console type='pty'/>
  </devices>
</domain>"""


def provisioning():
    ours, peer, ours_ready, peer_ready = [], [], [], []
    for i in range(ROUNDS):
        for way in (("ours", "peer") if i % 2 == 0 else ("peer", "ours")):
            name = f"prov-{way}-{i}"
            if way == "ours":
                doc = {"apiVersion": "vsphere/v1", "kind": "Cluster", "vms": [{
                    "name": name, "cpus": 1, "memoryMiB": 256, "placement": {"hosts": ["h1"]},
                    "boot": {"kernel": f"{GUEST}/vmlinuz", "initrd": f"{GUEST}/initrd.img",
                             "cmdline": f"console=ttyS0 vs.name={name} vs.root=/dev/vda"},
                    "disks": [{"pool": "shared", "from": TEMPLATE}], "nics": [{"network": "lan"}]}]}
                t = time.perf_counter()
                apply(doc, name)
                ours.append((time.perf_counter() - t) * 1000)
                wait_for("boot marker", lambda: "VSPHERE-GUEST-READY" in agent_console("h1", name))
                ours_ready.append((time.perf_counter() - t) * 1000)
                ctl("delete", "vm", name)
                wait_for("domain gone", lambda: virsh("h1", "domstate", name, check=False).returncode != 0, timeout=120, every=0.5)
                wait_for("volume deleted", lambda: ctl("volume", "delete", "shared", f"{name}-disk0", check=False).returncode == 0, timeout=60, every=0.5)
            else:
                disk_path = f"{SHARED}/{name}.qcow2"
                log = f"/tmp/{name}.console"
                if os.path.exists(log):
                    os.unlink(log)
                xml = domain_xml(name, f"<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
                                       f"<source file='{disk_path}'/><target dev='vda' bus='virtio'/></disk>",
                                 log, "br0", f"console=ttyS0 vs.name={name} vs.root=/dev/vda", "52:54:00:fe:00:%02x" % i)
                xml_path = f"{TB}/{name}.xml"
                with open(xml_path, "w") as f:
                    f.write(xml)
                t = time.perf_counter()
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", TEMPLATE, "-F", "qcow2", disk_path], check=True)
                virsh("h1", "create", xml_path)
                peer.append((time.perf_counter() - t) * 1000)
                wait_for("boot marker", lambda: "VSPHERE-GUEST-READY" in file_text(log))
                peer_ready.append((time.perf_counter() - t) * 1000)
                virsh("h1", "destroy", name)
                os.unlink(disk_path)
                os.unlink(log)
    return ours, peer, ours_ready, peer_ready


def replies(text, peer):
    return sorted({int(m) for m in re.findall(r"bytes from " + re.escape(peer) + r": seq=(\d+)", text)})


def lost_between(seqs, lo, hi):
    window = [s for s in seqs if lo <= s <= hi]
    return (hi - lo + 1) - len(window)


def migration_loss_ours():
    g = f"{GUEST}"
    def vm(name, ip, hosts, ping):
        return {"name": name, "cpus": 1, "memoryMiB": 256, "placement": {"hosts": hosts},
                "boot": {"kernel": f"{g}/vmlinuz", "initrd": f"{g}/initrd.img",
                         "cmdline": f"console=ttyS0 vs.name={name} vs.ip={ip}/24 vs.ping={ping}"},
                "nics": [{"network": "bench-overlay"}]}
    doc = {"apiVersion": "vsphere/v1", "kind": "Cluster", "networks": [{"name": "bench-overlay", "type": "vxlan", "vni": 5901}],
           "vms": [vm("bpa", "10.90.0.1", ["h1"], "10.90.0.2"), vm("bpb", "10.90.0.2", ["h1", "h2"], "10.90.0.1")]}
    apply(doc, "bench-ping")
    losses = []
    try:
        wait_for("pings over the overlay", lambda: len(replies(agent_console("h1", "bpa"), "10.90.0.2")) >= 10, every=0.5)
        for _ in range(MIGRATIONS):
            here = next(v for v in json.loads(ctl("get", "vms", "-o", "json").stdout) if v["name"] == "bpb")["host"]
            there = "h2" if here == "h1" else "h1"
            before = max(replies(agent_console("h1", "bpa"), "10.90.0.2"))
            ctl("vm", "migrate", "bpb", "--to", there, "-o", "json", "--timeout", "300")
            seqs = wait_for("pings after", lambda: (lambda s: s if s and s[-1] >= before + 25 else None)(
                replies(agent_console("h1", "bpa"), "10.90.0.2")), every=0.5)
            losses.append(lost_between(seqs, before, before + 25))
    finally:
        for v in ("bpa", "bpb"):
            ctl("delete", "vm", v, check=False)
    return losses


def migration_loss_peer():
    logs = {"ppa": "/tmp/ppa.console", "ppb": "/tmp/ppb.console"}
    for p in logs.values():
        if os.path.exists(p):
            os.unlink(p)
    placed = {"ppa": "h1", "ppb": "h2"}
    for name, ip, ping, mac in (("ppa", "10.250.1.201", "10.250.1.202", "52:54:00:fd:00:01"),
                                ("ppb", "10.250.1.202", "10.250.1.201", "52:54:00:fd:00:02")):
        xml_path = f"{TB}/{name}.xml"
        with open(xml_path, "w") as f:
            f.write(domain_xml(name, "", logs[name], "br0", f"console=ttyS0 vs.name={name} vs.ip={ip}/24 vs.ping={ping}", mac))
        virsh(placed[name], "create", xml_path)
    losses = []
    try:
        wait_for("pings on the flat bridge", lambda: len(replies(file_text(logs["ppa"]), "10.250.1.202")) >= 10, every=0.5)
        for _ in range(MIGRATIONS):
            here = placed["ppb"]
            there = "h2" if here == "h1" else "h1"
            before = max(replies(file_text(logs["ppa"]), "10.250.1.202"))
            virsh(here, "migrate", "--live", "--p2p", "ppb", f"qemu+tcp://{ADDR[there]}/system")
            placed["ppb"] = there
            seqs = wait_for("pings after", lambda: (lambda s: s if s and s[-1] >= before + 25 else None)(
                replies(file_text(logs["ppa"]), "10.250.1.202")), every=0.5)
            losses.append(lost_between(seqs, before, before + 25))
    finally:
        for name, host in placed.items():
            virsh(host, "destroy", name, check=False)
        for p in logs.values():
            if os.path.exists(p):
                os.unlink(p)
    return losses


def main():
    ours, peer, ours_ready, peer_ready = provisioning()
    loss_ours = migration_loss_ours()
    loss_peer = migration_loss_peer()
    o, p = statistics.median(ours), statistics.median(peer)
    orr, pr = statistics.median(ours_ready), statistics.median(peer_ready)
    result = {
        "benchmark": "storage",
        "peer": "qemu-img create -b + virsh create (same template, same shared directory, same host); "
                "virsh migrate --live --p2p of hand-made domains on the flat bridge",
        "rounds": ROUNDS,
        "provisionOursMedianMs": round(o, 1), "provisionPeerMedianMs": round(p, 1), "provisionRatio": round(o / p, 3),
        "bootedOursMedianMs": round(orr, 1), "bootedPeerMedianMs": round(pr, 1), "bootedRatio": round(orr / pr, 3),
        "provisionOursMs": [round(x, 1) for x in ours], "provisionPeerMs": [round(x, 1) for x in peer],
        "migrations": MIGRATIONS, "pingIntervalMs": 200,
        "pingLossOurs": loss_ours, "pingLossPeer": loss_peer,
        "pingLossOursMean": round(statistics.mean(loss_ours), 2), "pingLossPeerMean": round(statistics.mean(loss_peer), 2),
        "network": "ours: VXLAN overlay (head-end replication, anti-spoofing filter); peer: plain Linux bridge",
        "accelerator": "tcg", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "storage.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"{'benchmark':<22} {'ours':>10} {'peer':>10} {'ratio':>7}")
    print(f"{'linked clone running':<22} {o:>8.0f}ms {p:>8.0f}ms {o / p:>7.2f}")
    print(f"{'linked clone booted':<22} {orr:>8.0f}ms {pr:>8.0f}ms {orr / pr:>7.2f}")
    print(f"{'ping loss/migration':<22} {statistics.mean(loss_ours):>10.2f} {statistics.mean(loss_peer):>10.2f}   (replies lost, 200 ms apart)")


if __name__ == "__main__":
    main()
