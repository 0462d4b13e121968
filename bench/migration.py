#!/usr/bin/env python3
"""Benchmark migration: live migration of the same 256 MiB TCG guest (same domain XML) between the two
hosts of the testbed, through the controller (`vsphere-ctl vm migrate`) vs raw
`virsh migrate --live --p2p`, alternating, ROUNDS rounds, medians. Total = libvirt's job time
(`domjobinfo --completed` on the destination, which is what our record carries too), downtime = QEMU's
measured downtime. Then a guest dirtying 64 MiB of non-zero memory over an 8 MiB/s cap, once per policy;
and the pricing's prediction error. Writes bench/results/migration.json."""
import json, os, statistics, subprocess, sys, time

TB = os.environ.get("VSPHERE_TESTBED", "/var/lib/vsphere-testbed")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST = os.path.join(ROOT, "guest", "out")
CTL = os.environ.get("VSPHERE_CTL", os.path.join(ROOT, ".build", "release", "vsphere-ctl"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
DIRTY_BUDGET = os.environ.get("DIRTY_BUDGET", "30")
ENV = dict(os.environ, VSPHERE_CONFIG=f"{TB}/ctl.json")
ADDR = {h: open(f"{TB}/{h}/address").read().strip() for h in ("h1", "h2")}


def ctl(*args, check=True):
    r = subprocess.run([CTL, *args], capture_output=True, text=True, env=ENV)
    if check and r.returncode != 0:
        sys.exit(f"vsphere-ctl {' '.join(args)}: {r.stdout}{r.stderr}")
    return r


def virsh(host, *args):
    return subprocess.run(["virsh", "-c", f"qemu+tcp://{ADDR[host]}/system", *args], capture_output=True, text=True)


def vm_host(name):
    vms = json.loads(ctl("get", "vms", "-o", "json").stdout)
    return next(v for v in vms if v["name"] == name)


def wait_for(what, pred, timeout=180):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.5)
    sys.exit(f"timed out waiting for {what}")


def apply(name, cmdline=""):
    doc = {"apiVersion": "vsphere/v1", "kind": "Cluster", "vms": [{
        "name": name, "cpus": 1, "memoryMiB": 256,
        "boot": {"kernel": f"{GUEST}/vmlinuz", "initrd": f"{GUEST}/initrd.img",
                 "cmdline": f"console=ttyS0 vs.name={name} {cmdline}".strip()},
        "nics": [{"network": "lan"}], "placement": {"hosts": ["h1", "h2"]}}]}
    path = f"{TB}/{name}.json"
    with open(path, "w") as f:
        json.dump(doc, f)
    ctl("apply", "-f", path, "--wait", "--timeout", "180")


def completed_job(host, name):
    out = virsh(host, "domjobinfo", "--completed", name).stdout
    info = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip().split()[0] if v.strip() else ""
    return int(info.get("Time elapsed", "0")), int(info.get("Total downtime", "0"))


def ours(name, to, *extra):
    t = time.perf_counter()
    r = ctl("vm", "migrate", name, "--to", to, "-o", "json", "--timeout", "600", *extra, check=False)
    wall = (time.perf_counter() - t) * 1000
    m = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {"state": "error", "error": r.stderr}
    return m, wall


def theirs(name, src, dst):
    t = time.perf_counter()
    r = virsh(src, "migrate", "--live", "--p2p", "--persistent", "--undefinesource", name, f"qemu+tcp://{ADDR[dst]}/system")
    wall = (time.perf_counter() - t) * 1000
    if r.returncode != 0:
        sys.exit(f"virsh migrate: {r.stderr}")
    total, downtime = completed_job(dst, name)
    # The controller adopts the VM where virsh put it before the next round.
    wait_for("controller to see the move", lambda: vm_host(name).get("host") == dst)
    return total, downtime, wall


def main():
    ctl("delete", "vm", "bm1", check=False)
    ctl("delete", "vm", "bmd", check=False)
    apply("bm1")
    time.sleep(5)  # boot finished: an idle guest
    rows = {"ours": [], "virsh": []}
    predictions = []
    for i in range(ROUNDS):
        for way in (("ours", "virsh") if i % 2 == 0 else ("virsh", "ours")):
            src = vm_host("bm1")["host"]
            dst = "h2" if src == "h1" else "h1"
            if way == "ours":
                m, wall = ours("bm1", dst)
                if m.get("state") != "completed":
                    sys.exit(f"our migration failed: {m}")
                rows["ours"].append({"totalMs": m["totalMs"], "downtimeMs": m["downtimeMs"], "wallMs": round(wall)})
                if m.get("predicted") and i > 0:  # the first is priced before any link was measured
                    predictions.append((m["predicted"]["totalMs"], m["totalMs"], m["predicted"]["downtimeMs"], m["downtimeMs"]))
            else:
                total, downtime, wall = theirs("bm1", src, dst)
                rows["virsh"].append({"totalMs": total, "downtimeMs": downtime, "wallMs": round(wall)})
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("totalMs", "downtimeMs", "wallMs")} for k, v in rows.items()}
    ctl("delete", "vm", "bm1")

    # A guest dirtying faster than the capped link, once per policy.
    apply("bmd", "vs.dirty=64")
    time.sleep(30)  # dirtying under way
    policies = []
    for policy in ("minimal-downtime", "auto-converge", "post-copy", "suspend-if-needed"):
        src = vm_host("bmd")["host"]
        dst = "h2" if src == "h1" else "h1"
        m, wall = ours("bmd", dst, "--policy", policy, "--bandwidth", "8", "--budget", DIRTY_BUDGET)
        policies.append({
            "policy": policy, "result": m.get("state"), "converged": m.get("state") == "completed",
            "totalMs": m.get("totalMs"), "downtimeMs": m.get("downtimeMs"), "wallMs": round(wall),
            "predicted": m.get("predicted"), "steps": [s["action"] for s in m.get("steps", [])]})
        if m.get("state") == "completed" and m.get("predicted") and m.get("totalMs") and m.get("downtimeMs") is not None:
            predictions.append((m["predicted"]["totalMs"], m["totalMs"], m["predicted"]["downtimeMs"], m["downtimeMs"]))
    ctl("delete", "vm", "bmd")

    def err(pred, actual):
        return abs(pred - actual) / actual if actual else None
    total_errors = [e for e in (err(p, a) for p, a, _, _ in predictions) if e is not None]
    result = {
        "benchmark": "migration",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "guest": "256 MiB TCG guest, direct kernel boot, idle",
        "rounds": ROUNDS,
        "ours": rows["ours"], "virsh": rows["virsh"], "median": med,
        "ratio": {
            "totalMs": round(med["ours"]["totalMs"] / med["virsh"]["totalMs"], 3),
            "downtimeMs": round(med["ours"]["downtimeMs"] / max(1, med["virsh"]["downtimeMs"]), 3),
        },
        "goals": {"totalRatio": 1.05, "downtime": "<= virsh"},
        "dirtyGuest": {"workingSetMiB": 64, "capMiBps": 8, "budgetSeconds": int(DIRTY_BUDGET), "policies": policies},
        "prediction": {
            "samples": [{"predictedMs": p, "actualMs": a, "predictedDowntimeMs": pd, "actualDowntimeMs": ad} for p, a, pd, ad in predictions],
            "medianTotalError": round(statistics.median(total_errors), 3) if total_errors else None,
        },
    }
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "migration.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"{'':10} {'total ms':>9} {'downtime ms':>12} {'wall ms':>8}")
    for k in ("ours", "virsh"):
        print(f"{k:10} {med[k]['totalMs']:>9} {med[k]['downtimeMs']:>12} {med[k]['wallMs']:>8}")
    print(f"ratio total {result['ratio']['totalMs']} (goal <= 1.05), downtime {result['ratio']['downtimeMs']} (goal <= 1)")
    for p in policies:
        print(f"dirty guest, {p['policy']:18} {p['result']:10} total {p['totalMs']} ms, downtime {p['downtimeMs']} ms, wall {p['wallMs']} ms")
    print(f"pricing: median total-time error {result['prediction']['medianTotalError']}")


if __name__ == "__main__":
    main()
