#!/usr/bin/env python3
"""Benchmark placement: the reference install (512 hosts of 8 cores at 4:1 = 32 vCPUs, 64 GiB) with
10,000 VMs of 1 vCPU / 2 GiB and filled to capacity, through `vsphere-ctl simulate place` (release
build); and side by side with Ganeti's `hspace --simulate` on the same shape at 16 hosts.
Writes bench/results/placement.json."""
import json, os, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CTL = os.environ.get("VSPHERE_CTL", os.path.join(ROOT, ".build", "release", "vsphere-ctl"))


def cluster(n):
    doc = {"apiVersion": "vsphere/v1", "kind": "Cluster", "metadata": {"name": f"ref{n}"},
           "settings": {"placement": {"strategy": "spread", "cpuOvercommit": 4}},
           "hosts": [{"name": f"h{i:03d}", "capacity": {"cpus": 8, "memoryMiB": 65536}} for i in range(1, n + 1)]}
    f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(doc, f)
    f.close()
    return f.name


def simulate(path, count=None):
    args = [CTL, "simulate", "place", "-f", path, "--vm-cpus", "1", "--vm-memory-mib", "2048", "-o", "json"]
    if count:
        args += ["--count", str(count)]
    t = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    wall = (time.perf_counter() - t) * 1000
    d = json.loads(out)
    # Check every placement: no host over 32 vCPUs or 64 GiB.
    per = {}
    for p in d["placements"]:
        per[p["host"]] = per.get(p["host"], 0) + 1
    valid = all(v <= 32 for v in per.values())
    return {"placed": d["placed"], "unplaced": d["unplaced"], "hostsUsed": d["hostsUsed"], "elapsedMs": d["elapsedMs"],
            "wallMs": round(wall, 1), "valid": valid}


def hspace(n):
    t = time.perf_counter()
    out = subprocess.run(["hspace", f"--simulate=p,{n},1048576,65536,8,1024", "--standard-alloc=1024,2048,1,1",
                          "--machine-readable"], capture_output=True, text=True, check=True).stdout
    wall = (time.perf_counter() - t) * 1000
    kv = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {"placed": int(kv["HTS_ALLOC_INSTANCES"]), "failReason": kv.get("HTS_ALLOC_FAIL_REASON", ""), "wallMs": round(wall, 1)}


def main():
    ref = cluster(512)
    small = cluster(16)
    r10k = simulate(ref, 10000)
    fill = simulate(ref)
    ours16 = min((simulate(small) for _ in range(3)), key=lambda r: r["wallMs"])
    peer16 = min((hspace(16) for _ in range(3)), key=lambda r: r["wallMs"])
    for p in (ref, small):
        os.unlink(p)
    result = {
        "benchmark": "placement", "peer": "ganeti-htools hspace --simulate (same shape, 16 hosts)",
        "reference10k": r10k, "referenceFill": fill, "referenceCapacity": 512 * 32,
        "ours16": ours16, "hspace16": peer16,
        "speedup16": round(peer16["wallMs"] / ours16["wallMs"], 1),
        "goals": {"reference10kMs": 1000, "fillEqualsCapacity": True, "speedup16": 100, "placedAtLeastPeer": True},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "placement.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"{'placement':<28} {'ours':>12} {'peer':>12} {'ratio':>8}")
    print(f"{'512 hosts, 10,000 VMs':<28} {r10k['elapsedMs']:>10.1f}ms {'-':>12} {'':>8}  placed {r10k['placed']}, valid {r10k['valid']} (goal < 1000 ms)")
    print(f"{'512 hosts, fill':<28} {fill['elapsedMs']:>10.1f}ms {'-':>12} {'':>8}  placed {fill['placed']} of capacity {512 * 32}")
    print(f"{'16 hosts, fill (wall)':<28} {ours16['wallMs']:>10.1f}ms {peer16['wallMs']:>10.1f}ms {peer16['wallMs'] / ours16['wallMs']:>7.1f}x  placed {ours16['placed']} vs hspace {peer16['placed']} ({peer16['failReason']})")


if __name__ == "__main__":
    main()
