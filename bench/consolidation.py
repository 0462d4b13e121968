#!/usr/bin/env python3
"""Benchmark consolidation: the reference install simulated (512 hosts of 32 vCPUs and 64 GiB), VMs spread
at random at 30% and 50% memory load with anti-affinity pairs; `vsphere-ctl simulate consolidate`
(the real DPM planner, in the CLI process) vs a naive keep-the-fullest best-fit repack, both against
the lower bound max(ceil(sum vCPU / 32), ceil(sum MiB / 65536)). Hosts used, moves vs the VMs that had
to move (no churn), plan time. Writes bench/results/consolidation.json."""
import json, math, os, random, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CTL = os.environ.get("VSPHERE_CTL", os.path.join(ROOT, ".build", "release", "vsphere-ctl"))
HOSTS, CPUS, MIB = 512, 32, 65536
SIZES = [(1, 1024), (1, 2048), (2, 2048), (2, 4096), (4, 4096), (4, 8192), (8, 16384)]


def cluster(load, seed):
    rnd = random.Random(seed)
    hosts = [{"name": f"h{i:03d}", "cpu": 0, "mem": 0, "vms": []} for i in range(HOSTS)]
    vms, apart = [], {}
    target = HOSTS * MIB * load
    used = 0
    i = 0
    while used < target:
        cpus, mem = rnd.choice(SIZES)
        name = f"vm{i:05d}"
        anti = [vms[-1]["name"]] if vms and i % 10 == 0 else []
        for _ in range(50):
            h = rnd.randrange(HOSTS)
            hh = hosts[h]
            if hh["cpu"] + cpus <= CPUS and hh["mem"] + mem <= MIB and not any(a in hh["vms"] for a in anti):
                hh["cpu"] += cpus
                hh["mem"] += mem
                hh["vms"].append(name)
                vm = {"name": name, "cpus": cpus, "memoryMiB": mem, "host": hh["name"]}
                if anti:
                    vm["placement"] = {"antiAffinity": anti}
                    apart.setdefault(name, set()).update(anti)
                    for a in anti:
                        apart.setdefault(a, set()).add(name)
                vms.append(vm)
                used += mem
                break
        i += 1
    doc = {"apiVersion": "vsphere/v1", "kind": "Cluster", "metadata": {"name": f"ref-{int(load * 100)}"},
           "settings": {"placement": {"cpuOvercommit": 4}},
           "hosts": [{"name": h["name"], "capacity": {"cpus": CPUS // 4, "memoryMiB": MIB}} for h in hosts],
           "vms": vms}
    return doc, apart


def lower_bound(vms):
    return max(math.ceil(sum(v["cpus"] for v in vms) / CPUS), math.ceil(sum(v["memoryMiB"] for v in vms) / MIB))


def naive(doc, apart):
    """Keep the fullest hosts: repack every VM, biggest first, best fit onto hosts opened in order of
    their current fullness; a VM moves when it lands elsewhere than it runs."""
    t = time.perf_counter()
    load = {}
    for v in doc["vms"]:
        load[v["host"]] = load.get(v["host"], 0) + v["memoryMiB"]
    order = sorted((h["name"] for h in doc["hosts"]), key=lambda n: -load.get(n, 0))
    cpu, mem, on = {}, {}, {}
    opened = []
    where = {}
    for v in sorted(doc["vms"], key=lambda v: (-v["memoryMiB"], -v["cpus"])):
        best = None
        for h in opened:
            if cpu[h] + v["cpus"] <= CPUS and mem[h] + v["memoryMiB"] <= MIB and not (apart.get(v["name"], set()) & on[h]):
                if best is None or mem[h] > mem[best]:
                    best = h
        if best is None:
            for h in order[len(opened):]:
                opened.append(h)
                cpu[h], mem[h], on[h] = 0, 0, set()
                if not (apart.get(v["name"], set()) & on[h]):
                    best = h
                    break
        cpu[best] += v["cpus"]
        mem[best] += v["memoryMiB"]
        on[best].add(v["name"])
        where[v["name"]] = best
    moves = sum(1 for v in doc["vms"] if where[v["name"]] != v["host"])
    used = sum(1 for h in opened if on[h])
    return {"hostsUsed": used, "moves": moves, "elapsedMs": round((time.perf_counter() - t) * 1000, 1)}


def ours(doc):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(doc, f)
        path = f.name
    try:
        t = time.perf_counter()
        r = subprocess.run([CTL, "simulate", "consolidate", "-f", path, "-o", "json"], capture_output=True, text=True)
        wall = (time.perf_counter() - t) * 1000
    finally:
        os.unlink(path)
    if r.returncode != 0:
        sys.exit(f"simulate consolidate: {r.stderr}")
    out = json.loads(r.stdout)
    emptied = {m["from"] for m in out["moves"]}
    had_to_move = sum(1 for v in doc["vms"] if v["host"] in emptied)
    return {"hostsUsed": out["hostsUsed"], "hostsBefore": out["hostsBefore"], "moves": len(out["moves"]),
            "vmsOnEmptiedHosts": had_to_move, "batches": len({m["batch"] for m in out["moves"]}),
            "hostsToPowerOff": len(out["hostsToPowerOff"]), "elapsedMs": out["elapsedMs"], "wallMs": round(wall, 1)}


SMALL = 16


def small_cluster(load, seed):
    """16 hosts of 8 cores (32 vCPUs at 4:1) and 64 GiB, VMs spread at random; no anti-affinity (Ganeti
    expresses it with exclusion tags, which hsqueeze does not weigh)."""
    rnd = random.Random(seed)
    hosts = [{"name": f"node-{i:02d}", "cpu": 0, "mem": 0} for i in range(1, SMALL + 1)]
    vms, used, i = [], 0, 0
    while used < SMALL * MIB * load:
        cpus, mem = rnd.choice(SIZES[:6])
        cands = [h for h in hosts if h["cpu"] + cpus <= CPUS and h["mem"] + mem <= MIB]
        h = rnd.choice(cands)
        h["cpu"] += cpus
        h["mem"] += mem
        vms.append({"name": f"vm{i}", "cpus": cpus, "memoryMiB": mem, "host": h["name"]})
        used += mem
        i += 1
    doc = {"apiVersion": "vsphere/v1", "kind": "Cluster", "metadata": {"name": "small"},
           "settings": {"placement": {"cpuOvercommit": 4}},
           "hosts": [{"name": h["name"], "capacity": {"cpus": CPUS // 4, "memoryMiB": MIB}} for h in hosts], "vms": vms}
    return doc


def ganeti_text(doc):
    """The same cluster in Ganeti's text backend format; instances on shared (rbd) storage, so that
    they can live-migrate as ours do."""
    policy = "128,1,1024,1,1,1|128,1,1024,1,1,1;32768,8,1048576,16,8,12|diskless,file,sharedfile,plain,blockdev,drbd,rbd,ext,gluster|4.0|32.0"
    lines = ["group-01|fake-uuid-01|preferred||", ""]
    for h in doc["hosts"]:
        used = sum(v["memoryMiB"] for v in doc["vms"] if v["host"] == h["name"])
        lines.append(f"{h['name']}|{MIB}|0|{MIB - used}|1048576|1048576|{CPUS // 4}|N|fake-uuid-01|1024||N|0|1|1.0")
    lines.append("")
    for v in doc["vms"]:
        lines.append(f"{v['name']}|{v['memoryMiB']}|1024|{v['cpus']}|running|Y|{v['host']}||rbd||1|1|N")
    lines += ["", "", "|" + policy, "group-01|" + policy]
    return "\n".join(lines) + "\n"


def hsqueeze(doc, extra=()):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(ganeti_text(doc))
        path = f.name
    try:
        t = time.perf_counter()
        r = subprocess.run(["hsqueeze", "-t", path, "-C", *extra], capture_output=True, text=True)
        wall = (time.perf_counter() - t) * 1000
    finally:
        os.unlink(path)
    if r.returncode != 0:
        sys.exit(f"hsqueeze: {r.stderr}")
    out = r.stdout.splitlines()
    off = []
    if "'Nodes to offline'" in out:
        for line in out[out.index("'Nodes to offline'") + 1:]:
            if not line.strip() or not line.startswith("node-"):
                break
            off.append(line.strip())
    moves = sum(1 for line in out if "gnt-instance migrate" in line)
    return {"hostsFreed": len(off), "moves": moves, "wallMs": round(wall, 1)}


def main():
    squeeze = []
    for load in (0.3, 0.5):
        for seed in range(5):
            doc = small_cluster(load, seed=1000 + seed)
            o = ours(doc)
            h = hsqueeze(doc)
            h0 = hsqueeze(doc, ("--target-resources=0", "--minimal-resources=0"))
            squeeze.append({"load": load, "seed": 1000 + seed, "vms": len(doc["vms"]), "lowerBound": lower_bound(doc["vms"]),
                            "ours": {"hostsFreed": o["hostsToPowerOff"], "moves": o["moves"], "wallMs": o["wallMs"], "planMs": o["elapsedMs"]},
                            "hsqueeze": h, "hsqueezeNoHeadroom": h0})
    rows = []
    for load in (0.3, 0.5):
        doc, apart = cluster(load, seed=int(load * 100))
        lb = lower_bound(doc["vms"])
        o = ours(doc)
        n = naive(doc, apart)
        rows.append({"load": load, "vms": len(doc["vms"]), "antiAffinityPairs": sum(1 for v in doc["vms"] if "placement" in v),
                     "lowerBound": lb, "goalHosts": math.floor(1.01 * lb + 1), "ours": o, "naive": n,
                     "oursRatio": round(o["hostsUsed"] / lb, 3), "naiveRatio": round(n["hostsUsed"] / lb, 3)})
    result = {"benchmark": "consolidation", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "cluster": "512 hosts, 32 vCPUs (8 cores at 4:1) and 64 GiB each", "rows": rows,
              "goals": {"hosts": "<= 1.01 x lower bound + 1", "churn": "moves == VMs on emptied hosts", "planMs": 2000},
              "hsqueeze": {"peer": "ganeti-htools hsqueeze -t (text backend, rbd instances): default factors, and with --target-resources=0 --minimal-resources=0 (no headroom, as ours with 0 spare hosts)",
                           "cluster": f"{SMALL} hosts, 8 cores (32 vCPUs at 4:1) and 64 GiB each, no anti-affinity", "rows": squeeze}}
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "consolidation.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"{'load':>5} {'VMs':>6} {'LB':>5} {'goal':>5} {'ours':>5} {'naive':>6} {'moves':>6} {'had to':>7} {'naive moves':>12} {'plan ms':>8}")
    for r in rows:
        print(f"{r['load']:>5} {r['vms']:>6} {r['lowerBound']:>5} {r['goalHosts']:>5} {r['ours']['hostsUsed']:>5} {r['naive']['hostsUsed']:>6} "
              f"{r['ours']['moves']:>6} {r['ours']['vmsOnEmptiedHosts']:>7} {r['naive']['moves']:>12} {r['ours']['elapsedMs']:>8}")
    print(f"\nside by side with hsqueeze ({SMALL} hosts): hosts freed and migrations")
    print(f"{'load':>5} {'seed':>5} {'VMs':>4} {'LB':>3} {'ours freed':>10} {'hsq freed':>10} {'hsq0 freed':>10} {'ours moves':>10} {'hsq moves':>10} {'ours ms':>8} {'hsq ms':>7}")
    for r in squeeze:
        print(f"{r['load']:>5} {r['seed']:>5} {r['vms']:>4} {r['lowerBound']:>3} {r['ours']['hostsFreed']:>10} {r['hsqueeze']['hostsFreed']:>10} {r['hsqueezeNoHeadroom']['hostsFreed']:>10} "
              f"{r['ours']['moves']:>10} {r['hsqueeze']['moves']:>10} {r['ours']['wallMs']:>8} {r['hsqueeze']['wallMs']:>7}")


if __name__ == "__main__":
    main()
