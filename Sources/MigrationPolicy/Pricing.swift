/// Pricing a live migration before it is chosen: its duration, downtime and bytes on the wire, from the
/// guest's memory, the part of it that holds data, its measured dirty rate and the link's bandwidth.
///
/// The model is the classic iterative precopy one (Clark et al., "Live Migration of Virtual Machines",
/// NSDI 2005): the first pass sends every page that holds data (zero pages travel as flags and only cost
/// the scan), each later pass sends what the guest dirtied during the previous one, bounded by its
/// writable working set; the switch-over happens once the rest fits in the downtime limit. When the
/// dirty rate outpaces the link, precopy cannot converge and the policy decides the outcome.
public struct PriceInput: Sendable, Codable, Equatable {
    public var memoryBytes: Int64
    /// Pages that hold data (QEMU's "normal" pages); zero pages cost only the scan.
    public var dataBytes: Int64
    /// Bytes per second the guest dirties.
    public var dirtyRate: Int64
    /// Bytes per second the migration may use (the link's measured throughput, capped).
    public var bandwidth: Int64
    /// The memory the guest keeps rewriting; what a pass can at most find dirty.
    public var workingSetBytes: Int64
    /// Local disks copied along (NON_SHARED_*), sent before memory.
    public var diskBytes: Int64
    /// Bytes per second at which QEMU scans zero pages.
    public var zeroScanRate: Int64
    /// Fixed cost: connection, destination QEMU start-up, device state.
    public var setupMs: Int64
    /// The pause at the switch-over beyond sending the last dirty pages (device state, stop and start).
    public var switchoverMs: Int64

    public init(
        memoryBytes: Int64, dataBytes: Int64, dirtyRate: Int64, bandwidth: Int64, workingSetBytes: Int64? = nil,
        diskBytes: Int64 = 0, zeroScanRate: Int64 = 2 << 30, setupMs: Int64 = 250, switchoverMs: Int64 = 50
    ) {
        self.switchoverMs = switchoverMs
        self.memoryBytes = memoryBytes
        self.dataBytes = min(dataBytes, memoryBytes)
        self.dirtyRate = dirtyRate
        self.bandwidth = bandwidth
        self.workingSetBytes = workingSetBytes ?? memoryBytes
        self.diskBytes = diskBytes
        self.zeroScanRate = zeroScanRate
        self.setupMs = setupMs
    }
}

public struct Price: Sendable, Codable, Equatable {
    /// Whether precopy alone finishes within the policy's downtime limits.
    public var converges: Bool
    public var totalMs: Int64
    public var downtimeMs: Int64
    public var bytes: Int64
    public var iterations: Int
    /// How it ends: `precopy`, `auto-converge`, `post-copy`, `suspend`, `abort`.
    public var outcome: String
    public var dirtyRate: Int64
    public var bandwidth: Int64
    /// The fixed costs the price assumed (learned from earlier migrations by the controller).
    public var setupMs: Int64?
    public var switchoverMs: Int64?

    public init(converges: Bool, totalMs: Int64, downtimeMs: Int64, bytes: Int64, iterations: Int, outcome: String, dirtyRate: Int64, bandwidth: Int64) {
        self.converges = converges
        self.totalMs = totalMs
        self.downtimeMs = downtimeMs
        self.bytes = bytes
        self.iterations = iterations
        self.outcome = outcome
        self.dirtyRate = dirtyRate
        self.bandwidth = bandwidth
    }
}

public enum Pricing {
    public static let maxIterations = 30

    /// The price of migrating under `policy`. Monotone (property-tested): more memory, more dirtying or
    /// less bandwidth never make it cheaper.
    public static func price(_ input: PriceInput, policy: ConvergencePolicy) -> Price {
        var p = rawPrice(input, policy: policy)
        p.setupMs = input.setupMs
        p.switchoverMs = input.switchoverMs
        return p
    }

    static func rawPrice(_ input: PriceInput, policy: ConvergencePolicy) -> Price {
        let switchover = Double(max(0, input.switchoverMs)) / 1000
        let b = Double(max(1, input.bandwidth))
        let d = Double(max(0, input.dirtyRate))
        let w = Double(max(0, min(input.workingSetBytes, input.memoryBytes)))
        let data = Double(max(0, input.dataBytes))
        let zero = Double(max(0, input.memoryBytes - input.dataBytes))
        let scan = zero / Double(max(1, input.zeroScanRate))
        var seconds = Double(input.setupMs) / 1000 + Double(input.diskBytes) / b
        var bytes = Double(input.diskBytes)

        // First pass: data at link speed, zero pages at scan speed.
        var pass = data / b + scan
        seconds += pass
        bytes += data
        var iterations = 1
        let budget = Double(policy.budgetSeconds)
        var step = 0
        while true {
            // What the guest dirtied during the last pass, bounded by its working set.
            let dirty = min(d * pass, w)
            let limit = Double(policy.downtime(afterStep: step)) / 1000
            if dirty / b <= limit {
                return Price(
                    converges: true, totalMs: ms(seconds + dirty / b), downtimeMs: ms(dirty / b + switchover),
                    bytes: Int64(bytes + dirty), iterations: iterations, outcome: "precopy", dirtyRate: input.dirtyRate,
                    bandwidth: input.bandwidth)
            }
            let next = dirty / b
            let stalled = next >= pass * 0.99 || iterations >= maxIterations
            if stalled && step < policy.downtimeSteps {
                step += 1
                continue
            }
            if stalled || seconds + next > budget {
                // Precopy will not finish: the policy's way out.
                if policy.postCopy {
                    // After the switch the rest is pulled once, at link speed; the pause is the switch-over.
                    let rest = min(dirty, w)
                    return Price(
                        converges: false, totalMs: ms(seconds + rest / b), downtimeMs: ms(switchover), bytes: Int64(bytes + rest),
                        iterations: iterations + 1, outcome: "post-copy", dirtyRate: input.dirtyRate, bandwidth: input.bandwidth)
                }
                if policy.suspendIfNeeded {
                    let wait = max(0, min(budget, stalled ? seconds : budget) - seconds)
                    let rest = min(d * (pass + wait), w)
                    return Price(
                        converges: false, totalMs: ms(seconds + wait + rest / b), downtimeMs: ms(rest / b + switchover),
                        bytes: Int64(bytes + b * wait + rest), iterations: iterations + 1, outcome: "suspend",
                        dirtyRate: input.dirtyRate, bandwidth: input.bandwidth)
                }
                if policy.autoConverge {
                    // Throttling slows dirtying until it fits; QEMU steps the throttle each stalled pass.
                    // Passes at growing throttle: 20%, 30%, ... up to 99%.
                    var throttle = Double(policy.autoConvergeInitialPercent) / 100
                    var dirtyNow = dirty
                    var passNow = next
                    while iterations < 200 {
                        seconds += passNow
                        bytes += dirtyNow
                        iterations += 1
                        let rate = d * (1 - throttle)
                        dirtyNow = min(rate * passNow, w)
                        passNow = dirtyNow / b
                        if passNow <= Double(policy.maxDowntimeMs) / 1000 {
                            return Price(
                                converges: true, totalMs: ms(seconds + passNow), downtimeMs: ms(passNow + switchover),
                                bytes: Int64(bytes + dirtyNow), iterations: iterations, outcome: "auto-converge",
                                dirtyRate: input.dirtyRate, bandwidth: input.bandwidth)
                        }
                        if seconds > budget { break }
                        throttle = min(0.99, throttle + Double(policy.autoConvergeIncrementPercent) / 100)
                    }
                }
                return Price(
                    converges: false, totalMs: ms(max(seconds, budget)), downtimeMs: 0, bytes: Int64(bytes + b * max(0, budget - seconds)),
                    iterations: iterations, outcome: "abort", dirtyRate: input.dirtyRate, bandwidth: input.bandwidth)
            }
            seconds += next
            bytes += dirty
            pass = next
            iterations += 1
        }
    }

    static func ms(_ seconds: Double) -> Int64 { Int64((seconds * 1000).rounded()) }
}
