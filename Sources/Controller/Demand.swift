import AgentAPI
import Foundation
import Planner
import Synchronization

/// What each VM really uses, from its host's statistics: CPU from the growth of its CPU time between
/// two observations (cores busy), smoothed exponentially over the demand window; memory from QEMU's
/// resident set (what the guest touched). And the history of host loads that DPM's hysteresis reads.
///
/// In memory: a restarted controller measures again from scratch (its DPM windows start over, which
/// only delays power decisions).
public final class DemandTracker: Sendable {
    struct VMSample {
        var host: String
        var cpuNs: Int64
        var atMs: Int64
        var cores: Double?
        var rssMiB: Double?
    }

    private let vms = Mutex<[String: VMSample]>([:])
    private let history = Mutex<[UtilizationSample]>([])

    public init() {}

    /// Records one observation of a host's VMs. `windowSeconds`: the smoothing window.
    public func record(host: String, stats: [VMStats], nowMs: Int64, windowSeconds: Double) {
        vms.withLock { vms in
            for s in stats {
                let running = s.state == "running" || s.state == "blocked"
                let rss = s.raw["balloon.rss"]?.int.map { Double($0) / 1024 }
                guard running else {
                    // Only the host it ran on can say it stopped (a paused incoming copy elsewhere cannot).
                    if vms[s.name]?.host == host { vms[s.name] = nil }
                    continue
                }
                guard var prev = vms[s.name], prev.host == host, s.cpuTimeNs >= prev.cpuNs, nowMs > prev.atMs else {
                    // First sight, a move to another host or a restarted QEMU: a new baseline.
                    vms[s.name] = VMSample(host: host, cpuNs: s.cpuTimeNs, atMs: nowMs, cores: nil, rssMiB: rss)
                    continue
                }
                let dt = Double(nowMs - prev.atMs) / 1000
                let cores = Double(s.cpuTimeNs - prev.cpuNs) / 1e9 / dt
                let alpha = 1 - exp(-dt / max(windowSeconds, 0.001))
                prev.cores = prev.cores.map { $0 + alpha * (cores - $0) } ?? cores
                prev.cpuNs = s.cpuTimeNs
                prev.atMs = nowMs
                prev.rssMiB = rss ?? prev.rssMiB
                vms[s.name] = prev
            }
            // VMs the host no longer runs.
            let seen = Set(stats.map(\.name))
            for (name, v) in vms where v.host == host && !seen.contains(name) { vms[name] = nil }
        }
    }

    /// Forgets what a host's VMs measured (the host went away).
    public func forget(host: String) {
        vms.withLock { vms in vms = vms.filter { $0.value.host != host } }
    }

    /// Demand by VM, CPU converted at each host's core speed. VMs measured only once have no CPU figure
    /// yet and count with none.
    public func demand(coreMHz: [String: Int]) -> [String: Demand] {
        vms.withLock { vms in
            var out: [String: Demand] = [:]
            for (name, v) in vms {
                let mhz = Double(coreMHz[v.host] ?? 2000)
                out[name] = Demand(cpuMHz: (v.cores ?? 0) * mhz, memoryMiB: v.rssMiB ?? 0)
            }
            return out
        }
    }

    public func residentMiB(_ vm: String) -> Double? { vms.withLock { $0[vm]?.rssMiB } }

    /// Appends a sample of host loads, keeping `keepSeconds` of history.
    public func addSample(_ s: UtilizationSample, keepSeconds: Double) {
        history.withLock { h in
            h.append(s)
            let from = s.timeMs - Int64(keepSeconds * 1000)
            if let i = h.firstIndex(where: { $0.timeMs >= from }), i > 1 { h.removeFirst(i - 1) }
        }
    }

    public func samples() -> [UtilizationSample] { history.withLock { $0 } }

    /// Starts the hysteresis over (after a power action changed the set of hosts).
    public func resetSamples() { history.withLock { $0.removeAll() } }
}
