import DomainXML
import Dispatch
import FoundationEssentials
import Glibc
import Libvirt
import Logging
import ServiceLifecycle
import Synchronization

/// How many guest CPUs to keep active: enough for the guests' measured load at the target
/// utilization, at least one. Growing happens at once; shrinking only after `shrinkAfter` passes in a
/// row wanted fewer (hysteresis), so a short lull does not squeeze busy guests.
public struct ParkingPolicy: Sendable, Equatable {
    public var targetUtilization: Double
    public var shrinkAfter: Int
    public init(targetUtilization: Double = 0.5, shrinkAfter: Int = 3) {
        self.targetUtilization = targetUtilization
        self.shrinkAfter = shrinkAfter
    }

    /// `busyCores`: what the guests used over the last interval; `current`: CPUs active now;
    /// `lowStreak`: passes in a row that wanted fewer. Returns the new count and streak.
    public func next(busyCores: Double, available: Int, current: Int, lowStreak: Int) -> (active: Int, lowStreak: Int) {
        let want = max(1, min(available, Int((busyCores / max(targetUtilization, 0.01)).rounded(.up))))
        if want >= current { return (min(want, available), 0) }
        return lowStreak + 1 >= shrinkAfter ? (want, 0) : (current, lowStreak + 1)
    }
}

/// Core parking: on a lightly loaded host, every running guest's vCPUs and emulator threads are pinned
/// onto the first few guest CPUs (libvirt vcpupin/emulatorpin, live), so the others stay idle and the
/// processor can put them into deep sleep; with `offlineParkedCPUs` they are also taken offline (CPU 0
/// never is). Reported in the inventory as `parkedCPUs`.
public final class CoreParker: Service, Sendable {
    let agent: HostAgent
    let policy: ParkingPolicy
    let interval: Duration
    struct State {
        var cpuNs: Int64?
        var atNs: UInt64 = 0
        var active: Int?
        var lowStreak = 0
    }
    private let state = Mutex(State())

    public init(agent: HostAgent) {
        self.agent = agent
        policy = ParkingPolicy(targetUtilization: agent.config.coreParkingTargetUtilization)
        interval = .seconds(agent.config.coreParkingIntervalSeconds)
    }

    public func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await pass()
            } catch {
                agent.logger.warning("core parking pass failed", metadata: ["error": "\(error)"])
            }
            let interval = self.interval
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
        // Stopping: every guest gets all guest CPUs back.
        try? await apply(active: nil)
    }

    func pass() async throws {
        let now = DispatchTime.now().uptimeNanoseconds
        let total = try await agent.withLibvirt { c in
            try c.allDomainStats().values.reduce(Int64(0)) { sum, s in
                s["state.state"]?.intValue == 1 ? sum + (s["cpu.time"]?.intValue ?? 0) : sum
            }
        }
        let decision: Int? = state.withLock { s in
            defer { s.cpuNs = total; s.atNs = now }
            guard let prev = s.cpuNs, now > s.atNs, total >= prev else { return s.active }
            let busy = Double(total - prev) / Double(now - s.atNs)
            let available = agent.guestCPUList().count
            let (n, streak) = policy.next(busyCores: busy, available: available, current: s.active ?? available, lowStreak: s.lowStreak)
            s.lowStreak = streak
            s.active = n
            return n
        }
        try await apply(active: decision)
    }

    /// Pins every running guest onto the first `active` guest CPUs (all when nil) where it is not already.
    func apply(active: Int?) async throws {
        let guest = agent.guestCPUList()
        let set = Array(guest.prefix(active ?? guest.count))
        let parked = Array(guest.dropFirst(set.count))
        let offline = agent.config.offlineParkedCPUs
        let log = agent.logger
        try await agent.withLibvirt { c in
            let hostCPUs = try c.nodeInfo().cpus
            for d in try c.domains() {
                guard let info = try? d.info(), info.state == .running else { continue }
                let now = (try? d.vcpuPinning(hostCPUs: hostCPUs)) ?? []
                if now.allSatisfy({ $0 == set }) && !now.isEmpty { continue }
                do {
                    try d.pin(to: set, hostCPUs: hostCPUs)
                } catch {
                    log.warning("cannot pin", metadata: ["vm": "\(d.name)", "error": "\(error)"])
                }
            }
        }
        if offline {
            for cpu in guest where cpu != 0 {
                let path = "/sys/devices/system/cpu/cpu\(cpu)/online"
                try? (parked.contains(cpu) ? "0" : "1").write(toFile: path, atomically: false, encoding: .utf8)
            }
        }
        agent.setParked(parked)
    }
}
