#!/usr/bin/env python3
"""Benchmark agent-soak: does the agent grow under its controller? Samples a running agent's anonymous
memory (RssAnon) and proportional set size (Pss) every INTERVAL seconds for MINUTES minutes while its
controller drives it as it does all day (reconcile passes, event stream, statistics, resource pools),
and reports the growth between the first and the last quarter of the run (the first minutes, while
caches and pools fill, do not count as growth). Writes bench/results/agent-soak.json.

Usage: agent_soak.py PID [MINUTES] [INTERVAL]  (default 30 minutes, a sample every 30 s)
The agent of `make demo` (its pid in /var/lib/vsphere/demo/agent.pid) is the usual subject: two VMs,
a resource pool, the controller's passes every 2 s."""
import json, os, statistics, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sample(pid):
    out = {"t": time.time()}
    for line in open(f"/proc/{pid}/status"):
        k = line.split(":")[0]
        if k in ("RssAnon", "VmRSS"):
            out[k] = int(line.split()[1])
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            out["Pss"] = int(line.split()[1])
    return out


def main():
    pid = int(sys.argv[1])
    minutes = float(sys.argv[2]) if len(sys.argv) > 2 else 30
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 30
    comm = open(f"/proc/{pid}/comm").read().strip()
    assert comm == "vsphere-agent", f"{pid} is {comm}, not the agent"
    samples = []
    end = time.time() + minutes * 60
    while time.time() < end:
        samples.append(sample(pid))
        time.sleep(interval)
    samples.append(sample(pid))
    q = max(1, len(samples) // 4)
    first, last = samples[:q], samples[-q:]

    def med(xs, k):
        return statistics.median(s[k] for s in xs)

    growth_anon = med(last, "RssAnon") - med(first, "RssAnon")
    growth_pss = med(last, "Pss") - med(first, "Pss")
    slope = second_half_slope([s["RssAnon"] for s in samples], interval)
    result = {
        "benchmark": "agent-soak", "minutes": minutes, "intervalS": interval, "samples": len(samples),
        "anonFirstQuarterMiB": round(med(first, "RssAnon") / 1024, 2), "anonLastQuarterMiB": round(med(last, "RssAnon") / 1024, 2),
        "anonGrowthKiB": growth_anon, "pssGrowthKiB": growth_pss,
        "anonMaxMiB": round(max(s["RssAnon"] for s in samples) / 1024, 2),
        "pssLastQuarterMiB": round(med(last, "Pss") / 1024, 2), "rssLastQuarterMiB": round(med(last, "VmRSS") / 1024, 2),
        "anonSlopeSecondHalfKiBPerMin": round(slope, 2),
        "goal": "no growth: anonymous memory flat over the second half of the run (least-squares slope at most 1 KiB a minute)",
        "met": slope <= 1,
        "anonKiB": [s["RssAnon"] for s in samples],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "agent-soak.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"agent-soak: {minutes:.0f} min, anon {result['anonFirstQuarterMiB']} -> {result['anonLastQuarterMiB']} MiB "
          f"({growth_anon:+d} KiB), pss {growth_pss:+d} KiB, max anon {result['anonMaxMiB']} MiB: "
          + f"second half {slope:+.1f} KiB/min: " + ("no growth" if result["met"] else "GROWS"))


def second_half_slope(values, interval_s):
    """Least-squares slope (KiB a minute) of the second half of the samples: after warm-up."""
    half = values[len(values) // 2:]
    n = len(half)
    if n < 2:
        return 0.0
    xs = [i * interval_s / 60 for i in range(n)]
    mx, my = sum(xs) / n, sum(half) / n
    return sum((x - mx) * (y - my) for x, y in zip(xs, half)) / sum((x - mx) ** 2 for x in xs)


if __name__ == "__main__":
    main()
