#!/usr/bin/env python3
"""Benchmark events: from a libvirt event on a host to the controller's event log. Four running guests
(two per host of the testbed) are each suspended and resumed with virsh on their host, in one burst:
100 VM state changes. Each lifecycle event's latency is the controller's recording
time minus the time its host's agent saw it (both clocks are this machine's). p50/p99/max; goal p99 <
100 ms. Writes bench/results/events.json."""
import json, os, statistics, subprocess, sys, time

TB = os.environ.get("VSPHERE_TESTBED", "/var/lib/vsphere-testbed")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST = os.path.join(ROOT, "guest", "out")
CTL = os.environ.get("VSPHERE_CTL", os.path.join(ROOT, ".build", "release", "vsphere-ctl"))
SCRIPT = os.path.join(ROOT, "scripts", "testbed.sh")
ENV = dict(os.environ, VSPHERE_CONFIG=f"{TB}/ctl.json")
# Four guests, two per host, 25 changes each: ten idle TCG guests alone keep both of this machine's
# cores busy (TCG's idle cost), which measures the CPU scheduler rather than the event path.
VMS = [f"ev{i}" for i in range(1, int(os.environ.get("EVENTS_VMS", "4")) + 1)]
CYCLES = 100 // (2 * len(VMS)) + (1 if 100 % (2 * len(VMS)) else 0)


def ctl(*args):
    r = subprocess.run([CTL, *args], capture_output=True, text=True, env=ENV)
    if r.returncode != 0:
        sys.exit(f"vsphere-ctl {' '.join(args)}: {r.stdout}{r.stderr}")
    return r.stdout


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))]


def main():
    wait_gone()
    doc = {"apiVersion": "vsphere/v1", "kind": "Cluster", "vms": [{
        "name": n, "cpus": 1, "memoryMiB": 128,
        "boot": {"kernel": f"{GUEST}/vmlinuz", "initrd": f"{GUEST}/initrd.img", "cmdline": f"console=ttyS0 vs.name={n}"},
        "placement": {"hosts": ["h1", "h2"]}} for n in VMS]}
    path = f"{TB}/events-bench.json"
    with open(path, "w") as f:
        json.dump(doc, f)
    ctl("apply", "-f", path, "--wait", "--timeout", "300")
    try:
        where = {v["name"]: v["host"] for v in json.loads(ctl("get", "vms", "-o", "json")) if v["name"] in VMS}
        # Booting TCG guests take both CPUs for a few seconds: the burst starts once they are idle.
        time.sleep(int(os.environ.get("EVENTS_SETTLE", "20")))
        last = max([e["id"] for e in json.loads(ctl("get", "events", "-o", "json"))] or [0])
        # The burst: every host runs its guests' suspend/resume cycles in one shell, the hosts at once.
        procs = []
        for host in sorted(set(where.values())):
            mine = [n for n, h in where.items() if h == host]
            cmds = "; ".join(f"virsh -q -c qemu:///system suspend {n} >/dev/null; virsh -q -c qemu:///system resume {n} >/dev/null"
                             for _ in range(CYCLES) for n in mine)
            procs.append(subprocess.Popen(["bash", SCRIPT, "exec", host, "sh", "-c", cmds]))
        for p in procs:
            p.wait()
        want = len(VMS) * CYCLES * 2  # at least 100
        deadline = time.time() + 60
        seen = []
        while time.time() < deadline:
            events = json.loads(ctl("get", "events", "-o", "json"))
            seen = [e for e in events if e["id"] > last and e["kind"] == "lifecycle" and e.get("name") in VMS
                    and e.get("event") in ("suspended", "resumed") and e.get("hostTimeMs")]
            if len(seen) >= want:
                break
            time.sleep(0.5)
        lat = [e["timeMs"] - e["hostTimeMs"] for e in seen]
        if len(lat) < want:
            sys.exit(f"only {len(lat)} of {want} state changes reached the controller's log")
        span = max(e["hostTimeMs"] for e in seen) - min(e["hostTimeMs"] for e in seen)
        res = {"benchmark": "events", "vms": len(VMS), "stateChanges": want, "recorded": len(lat), "burstMs": span,
               "p50Ms": pct(lat, 50), "p99Ms": pct(lat, 99), "maxMs": max(lat), "meanMs": round(statistics.mean(lat), 1),
               "goalP99Ms": 100, "met": pct(lat, 99) < 100,
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
        with open(os.path.join(ROOT, "bench", "results", "events.json"), "w") as f:
            json.dump(res, f, indent=2)
        print(f"{'events':<10} {want} state changes in {span} ms: p50 {res['p50Ms']} ms, p99 {res['p99Ms']} ms, max {res['maxMs']} ms (goal p99 < 100 ms)")
        if os.environ.get("EVENTS_DEBUG"):
            print("slowest:", sorted(((e["timeMs"] - e["hostTimeMs"], e["hostTimeMs"] - min(x["hostTimeMs"] for x in seen), e["source"]) for e in seen), reverse=True)[:8])
    finally:
        for n in VMS:
            subprocess.run([CTL, "delete", "vm", n], capture_output=True, env=ENV)
        wait_gone()


def domains():
    out = []
    for h in ("h1", "h2"):
        r = subprocess.run(["bash", SCRIPT, "exec", h, "virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True, text=True)
        out += [n for n in r.stdout.split() if n in VMS]
    return out


def wait_gone():
    """Until no host has the bench's domains (a reconcile pass deleting them must not meet a new run)."""
    deadline = time.time() + 120
    while time.time() < deadline and domains():
        time.sleep(0.5)


if __name__ == "__main__":
    main()
