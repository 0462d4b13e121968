#!/usr/bin/env python3
"""Benchmark vm-start: start latency of the same defined domain through the agent's API vs `virsh start`
on the same test host, alternating, N rounds, medians; and the agent's memory idle and with 10 running VMs,
as the host pays for it: anonymous memory (RssAnon: heap, stacks, private copies) and the proportional
set size (Pss: its share of every page it maps). Plain RSS is reported too, but it counts clean pages of
code and libraries that the kernel shares and reclaims on its own. Writes bench/results/vm-start.json."""
import http.client, json, os, ssl, statistics, subprocess, sys, time

TB = os.environ.get("VSPHERE_TESTBED", "/var/lib/vsphere-testbed")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST = os.path.join(ROOT, "guest", "out")
ROUNDS = int(os.environ.get("ROUNDS", "10"))
HOST = "h1"
ADDR = open(f"{TB}/{HOST}/address").read().strip()
HOLDER = open(f"{TB}/{HOST}/holder.pid").read().strip()
AGENT_PID = open(f"{TB}/{HOST}/agent.pid").read().strip()
assert open(f"/proc/{AGENT_PID}/comm").read().strip() == "vsphere-agent", "agent.pid is not the agent"

# Mutual TLS: the cluster CA, and the testbed's client identity it issued.
ctx = ssl.create_default_context(cafile=f"{TB}/controller/pki/ca.crt")
ctx.load_cert_chain(f"{TB}/client/client.crt", f"{TB}/client/client.key")
conn = http.client.HTTPSConnection(ADDR, 7443, context=ctx, timeout=120)


def api(method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    return r.status, (json.loads(data) if data and r.getheader("Content-Type", "").startswith("application/json") else data)


def virsh(*args):
    return subprocess.run(["nsenter", "-t", HOLDER, "-n", "-m", "-u", "--", "virsh", "-c", "qemu:///system", *args],
                          capture_output=True, text=True)


def status_kib(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_kib(pid):
    return status_kib(pid, "VmRSS")


def memory_kib(pid):
    """RssAnon, Pss and VmRSS of a process, in KiB."""
    pss = 0
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
    return {"anon": status_kib(pid, "RssAnon"), "pss": pss, "rss": rss_kib(pid)}


def uptime_s(pid):
    """Seconds since the process started (/proc/PID/stat's start time, in clock ticks since boot)."""
    start_ticks = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])
    return float(open("/proc/uptime").read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")


def swift_runtime(pid):
    """How the measured agent carries the Swift runtime, read off its mappings: `make release` links it in."""
    return "shared" if any("libswiftCore.so" in line for line in open(f"/proc/{pid}/maps")) else "linked in"


def virsh_idle_memory_kib():
    """The same host's libvirt client of reference, idle: an interactive virsh connected to the same
    libvirtd after one `list --all`. Every libvirt client pays for libvirt's own libraries."""
    p = subprocess.Popen(["nsenter", "-t", HOLDER, "-n", "-m", "-u", "--", "virsh", "-c", "qemu:///system"],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        p.stdin.write("list --all\n")
        p.stdin.flush()
        time.sleep(2)
        return memory_kib(p.pid)
    finally:
        p.stdin.close()
        p.wait(timeout=10)


def spec(name):
    return {"name": name, "cpus": 1, "memoryMiB": 128,
            "boot": {"kernel": f"{GUEST}/vmlinuz", "initrd": f"{GUEST}/initrd.img", "cmdline": f"console=ttyS0 vs.name={name}"}}


def main():
    # Idle: the agent serving the testbed's controller, with no VM, in its steady state (at least a
    # minute of the controller's passes).
    api("GET", "/v1/host")
    api("GET", "/v1/vms")
    wait = 60 - uptime_s(AGENT_PID)
    if wait > 0:
        time.sleep(wait)
    idle = memory_kib(AGENT_PID)
    rss_peak = status_kib(AGENT_PID, "VmHWM")
    idle_uptime = uptime_s(AGENT_PID)
    virsh_idle = virsh_idle_memory_kib()

    status, _ = api("PUT", "/v1/vms/bench1", spec("bench1"))
    assert status in (200, 201), status
    agent_ms, virsh_ms = [], []
    for i in range(ROUNDS):
        for way in (("agent", "virsh") if i % 2 == 0 else ("virsh", "agent")):
            if way == "agent":
                t = time.perf_counter()
                status, body = api("POST", "/v1/vms/bench1/start")
                agent_ms.append((time.perf_counter() - t) * 1000)
                assert status == 200, body
            else:
                t = time.perf_counter()
                r = virsh("start", "bench1")
                virsh_ms.append((time.perf_counter() - t) * 1000)
                assert r.returncode == 0, r.stderr
            virsh("destroy", "bench1")
    api("DELETE", "/v1/vms/bench1?force=true")

    # RSS with 10 running VMs, after the controller-like calls an agent serves all day.
    for i in range(10):
        api("PUT", f"/v1/vms/rss{i}", spec(f"rss{i}"))
        api("POST", f"/v1/vms/rss{i}/start")
    for _ in range(20):
        api("GET", "/v1/stats")
        api("GET", "/v1/vms")
        api("GET", "/v1/host")
    ten = memory_kib(AGENT_PID)
    for i in range(10):
        api("DELETE", f"/v1/vms/rss{i}?force=true")

    a, v = statistics.median(agent_ms), statistics.median(virsh_ms)
    result = {
        "benchmark": "vm-start", "peer": "virsh start (same defined domain, same host)", "rounds": ROUNDS,
        "agentMedianMs": round(a, 1), "virshMedianMs": round(v, 1), "ratio": round(a / v, 3), "goalRatio": 1.10,
        "agentMs": [round(x, 1) for x in agent_ms], "virshMs": [round(x, 1) for x in virsh_ms],
        "agentAnonIdleMiB": mib(idle["anon"]), "agentPssIdleMiB": mib(idle["pss"]), "agentRssIdleMiB": mib(idle["rss"]),
        "agentAnon10VMsMiB": mib(ten["anon"]), "agentPss10VMsMiB": mib(ten["pss"]), "agentRss10VMsMiB": mib(ten["rss"]),
        "goalAnonIdleMiB": 16, "goalAnon10VMsMiB": 24,
        "agentUptimeAtIdleS": round(idle_uptime), "agentRssPeakMiB": mib(rss_peak),
        "virshIdleAnonMiB": mib(virsh_idle["anon"]), "virshIdlePssMiB": mib(virsh_idle["pss"]), "virshIdleRssMiB": mib(virsh_idle["rss"]),
        "agentSwiftRuntime": swift_runtime(AGENT_PID),
        "accelerator": "tcg", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "vm-start.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"{'benchmark':<10} {'ours':>12} {'peer':>12} {'ratio':>7} {'goal':>6}")
    print(f"{'vm-start':<10} {a:>10.1f}ms {v:>10.1f}ms {a / v:>7.3f} {'<=1.10':>6}")
    print(f"{'agent mem':<10} idle after {idle_uptime:.0f} s: anon {mib(idle['anon'])} MiB (goal <= 16), pss {mib(idle['pss'])} MiB, "
          f"rss {mib(idle['rss'])} MiB; with 10 VMs: anon {mib(ten['anon'])} MiB (goal <= 24), pss {mib(ten['pss'])} MiB, "
          f"rss {mib(ten['rss'])} MiB; idle virsh on the same libvirtd: anon {mib(virsh_idle['anon'])} MiB, "
          f"pss {mib(virsh_idle['pss'])} MiB, rss {mib(virsh_idle['rss'])} MiB")


def mib(kib):
    return round(kib / 1024, 1)


if __name__ == "__main__":
    main()
