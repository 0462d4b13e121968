/// DPM's power decisions, with hysteresis: a host is woken only when demand has stayed high for a
/// whole window, and hosts are packed and powered off only when demand has stayed low for a (longer)
/// window. Defaults are vSphere DPM's: a target utilization of 63 % ± 18 % (wake above 81 %, pack below
/// 45 %), 5 minutes of high demand, 40 minutes of low demand.
public struct PowerSettings: Sendable, Equatable, Codable {
    public var targetUtilization: Double
    public var tolerance: Double
    public var powerOnSustainSeconds: Double
    public var powerOffSustainSeconds: Double

    public init(targetUtilization: Double = 0.63, tolerance: Double = 0.18, powerOnSustainSeconds: Double = 300, powerOffSustainSeconds: Double = 2400) {
        self.targetUtilization = targetUtilization
        self.tolerance = tolerance
        self.powerOnSustainSeconds = powerOnSustainSeconds
        self.powerOffSustainSeconds = powerOffSustainSeconds
    }

    public var high: Double { targetUtilization + tolerance }
    public var low: Double { max(0, targetUtilization - tolerance) }
}

/// The loads of the powered-on hosts at one moment.
public struct UtilizationSample: Sendable, Equatable, Codable {
    public var timeMs: Int64
    public var loads: [HostLoad]
    public init(timeMs: Int64, loads: [HostLoad]) {
        self.timeMs = timeMs
        self.loads = loads
    }
    /// The busiest host's larger load (CPU or memory).
    public var peak: Double { loads.map { max($0.cpu, $0.memory) }.max() ?? 0 }
}

/// A host DPM may wake.
public struct StandbyHost: Sendable, Equatable {
    public var name: String
    public var cpuMHz: Int
    public var memoryMiB: Int
    public init(name: String, cpuMHz: Int, memoryMiB: Int) {
        self.name = name
        self.cpuMHz = cpuMHz
        self.memoryMiB = memoryMiB
    }
}

public struct PowerAdvice: Sendable, Equatable, Codable {
    public enum Action: String, Sendable, Codable { case none, powerOn, consolidate }
    public var action: Action
    public var hosts: [String]
    public var reason: String
    public init(action: Action, hosts: [String] = [], reason: String) {
        self.action = action
        self.hosts = hosts
        self.reason = reason
    }
}

public struct PowerAdvisor: Sendable {
    public var settings: PowerSettings
    public init(settings: PowerSettings = PowerSettings()) { self.settings = settings }

    /// The samples of the last `seconds`, when the history reaches back that far (else nil: too early
    /// to tell, the window is not covered yet).
    public static func window(_ samples: [UtilizationSample], seconds: Double, now: Int64) -> [UtilizationSample]? {
        let from = now - Int64(seconds * 1000)
        guard let first = samples.first, first.timeMs <= from else { return nil }
        let inside = samples.filter { $0.timeMs >= from }
        return inside.isEmpty ? nil : inside
    }

    /// `samples`: oldest first. `standby`: hosts that are off and have a driver that can wake them.
    public func advise(_ samples: [UtilizationSample], now: Int64, standby: [StandbyHost]) -> PowerAdvice {
        let s = settings
        guard let latest = samples.last else { return PowerAdvice(action: .none, reason: "no demand measured yet") }
        let peak = latest.peak
        if peak > s.high {
            guard let w = Self.window(samples, seconds: s.powerOnSustainSeconds, now: now) else {
                return PowerAdvice(action: .none, reason: "demand \(pct(peak)) above \(pct(s.high)) for less than \(Int(s.powerOnSustainSeconds)) s")
            }
            guard w.allSatisfy({ $0.peak > s.high }) else {
                return PowerAdvice(action: .none, reason: "demand above \(pct(s.high)) but not for the whole \(Int(s.powerOnSustainSeconds)) s")
            }
            guard let wake = standby.sorted(by: { ($0.cpuMHz, $0.memoryMiB, $1.name) > ($1.cpuMHz, $1.memoryMiB, $0.name) }).first else {
                return PowerAdvice(action: .none, reason: "demand \(pct(peak)) above \(pct(s.high)) but no host in standby to wake")
            }
            let busiest = latest.loads.max { max($0.cpu, $0.memory) < max($1.cpu, $1.memory) }!
            return PowerAdvice(
                action: .powerOn, hosts: [wake.name],
                reason: "\(busiest.host) at \(pct(peak)) (cpu \(pct(busiest.cpu)), memory \(pct(busiest.memory))), above \(pct(s.high)) for \(Int(s.powerOnSustainSeconds)) s")
        }
        if peak < s.low {
            guard let w = Self.window(samples, seconds: s.powerOffSustainSeconds, now: now) else {
                return PowerAdvice(action: .none, reason: "every host below \(pct(s.low)) for less than \(Int(s.powerOffSustainSeconds)) s")
            }
            guard w.allSatisfy({ $0.peak < s.low }) else {
                return PowerAdvice(action: .none, reason: "demand below \(pct(s.low)) but not for the whole \(Int(s.powerOffSustainSeconds)) s")
            }
            return PowerAdvice(action: .consolidate, reason: "every host below \(pct(s.low)) for \(Int(s.powerOffSustainSeconds)) s (peak \(pct(peak)))")
        }
        return PowerAdvice(action: .none, reason: "demand within the target range (peak \(pct(peak)), \(pct(s.low))–\(pct(s.high)))")
    }

    func pct(_ x: Double) -> String { "\(Int((x * 100).rounded()))%" }
}
