/// Service levels expressed the way libvirt applies them on one host (cgroups through `<cputune>` and
/// `<memtune>`).
///
/// - CPU shares → `<cputune><shares>` (cgroup `cpu.shares`): vSphere's low/normal/high = 500/1000/2000
///   per vCPU, or a custom number.
/// - CPU limit (MHz, whole VM) → `<global_period>`/`<global_quota>` (CFS bandwidth on the domain's cgroup):
///   quota = limit / host core MHz × period, at least 1 ms.
/// - Memory limit → `<memtune><hard_limit>` (`memory.limit_in_bytes`).
/// - Memory reservation → `<memtune><soft_limit>` (`memory.soft_limit_in_bytes`): on cgroup v1 the kernel
///   reclaims a cgroup down to its soft limit first under pressure, which protects the reserved part. The
///   reservation is also enforced by admission (the agent and the controller refuse what cannot be reserved).
/// - Memory shares have no cgroup v1 counterpart; they weigh the controller's decisions only.
/// - CPU reservation is enforced by admission; `cpu.shares` carries it proportionally under contention.
public struct HostTuning: Sendable, Equatable {
    public var cpuShares: Int?
    public var cpuPeriodMicros: Int?
    public var cpuQuotaMicros: Int?
    public var memoryHardLimitKiB: Int?
    public var memorySoftLimitKiB: Int?

    public init(
        cpuShares: Int? = nil, cpuPeriodMicros: Int? = nil, cpuQuotaMicros: Int? = nil,
        memoryHardLimitKiB: Int? = nil, memorySoftLimitKiB: Int? = nil
    ) {
        self.cpuShares = cpuShares
        self.cpuPeriodMicros = cpuPeriodMicros
        self.cpuQuotaMicros = cpuQuotaMicros
        self.memoryHardLimitKiB = memoryHardLimitKiB
        self.memorySoftLimitKiB = memorySoftLimitKiB
    }

    public static let defaultPeriodMicros = 100_000

    /// Maps a spec's service levels onto one host whose cores run at `hostCoreMHz`.
    public static func from(_ spec: VMSpec, hostCoreMHz: Int) -> HostTuning {
        var t = HostTuning()
        guard let r = spec.resources else { return t }
        if let cpu = r.cpu {
            t.cpuShares = cpu.shares?.cpuShares(vcpus: spec.cpus)
            if let limit = cpu.limitMHz {
                let mhz = max(hostCoreMHz, 1)
                let period = defaultPeriodMicros
                // A limit at or above the VM's full speed is no limit at all.
                if limit < mhz * spec.cpus {
                    t.cpuPeriodMicros = period
                    t.cpuQuotaMicros = max(1000, Int((Double(limit) / Double(mhz) * Double(period)).rounded()))
                }
            }
        }
        if let mem = r.memory {
            if let limit = mem.limitMiB, limit < spec.memoryMiB {
                t.memoryHardLimitKiB = limit * 1024
            }
            if let res = mem.reservationMiB, res > 0 {
                t.memorySoftLimitKiB = res * 1024
            }
        }
        return t
    }

    public var isEmpty: Bool { self == HostTuning() }
}
