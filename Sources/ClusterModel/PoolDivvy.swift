/// Resource pools enforced on hosts: each pool's cluster-wide reservation, limit and shares divided
/// among the hosts its VMs run on (vSphere DRS calls this the "divvy"), as one cgroup partition per pool
/// and host (libvirt `<resource><partition>`), nested like the pools.
///
/// Per pool and host, with the weight of a host = the configured size of the pool's running VMs there
/// (vCPUs × core MHz for CPU, MiB for memory):
/// - **Reservation**: the reservations of the VMs and child pools on that host, plus the rest of the
///   pool's effective reservation split by weight. The per-host values add up to the pool's effective
///   reservation whenever the pool has VMs anywhere.
/// - **Limit**: the pool's limit split by weight, never below what must fit under it on that host
///   (the VMs' own CPU limits, since cgroup v1 refuses a child CFS quota above its parent's; the
///   guests' memory footprints, since a guest held below its RAM is killed; the host's reservation),
///   and never above the parent pool's limit on that host. Admission control (manifest validation)
///   keeps a pool's memory limit at or above its running VMs' memory, so that floor binds only by
///   QEMU's overhead. A host where the pool
///   runs nothing gets the pool's whole limit, so a VM that arrives there is capped at once.
///   While no floor binds, the per-host limits of the hosts that run the pool's VMs add up to at most
///   the pool's limit.
/// - **Shares**: vSphere's pool shares (low/normal/high = 2000/4000/8000 for CPU, as for a 4-vCPU VM),
///   raised where needed so that under full contention a partition's proportional part of its parent
///   is at least its reservation there (siblings: the other pools and the VMs at the same level).
/// Memory shares have no cgroup v1 or v2 counterpart; they weigh no host setting.
public enum PoolDivvy {
    public struct HostFacts: Sendable, Equatable {
        public var coreMHz: Int
        public var cpus: Int
        public var memoryMiB: Int
        public init(coreMHz: Int, cpus: Int, memoryMiB: Int) {
            self.coreMHz = coreMHz
            self.cpus = cpus
            self.memoryMiB = memoryMiB
        }
        var totalMHz: Int { max(1, coreMHz) * max(1, cpus) }
    }

    /// A running VM and the host it runs on (a migrating VM counts on both ends).
    public struct Placed: Sendable, Equatable {
        public var spec: VMSpec
        public var host: String
        public init(spec: VMSpec, host: String) {
            self.spec = spec
            self.host = host
        }
    }

    /// vSphere's CPU shares of a resource pool (a pool weighs like a 4-vCPU VM).
    public static func poolCPUShares(_ s: Shares?) -> Int {
        switch s ?? .normal {
        case .low: return 2000
        case .normal: return 4000
        case .high: return 8000
        case .custom(let n): return min(262_144, max(2, n))
        }
    }

    /// What a running guest takes from its cgroup's memory: its RAM plus QEMU's own (measured here about
    /// 55 MiB for a 128 MiB TCG guest). A pool's memory limit on a host never goes below the sum of its
    /// guests' footprints there: the kernel would kill a guest held below its RAM (the host does not
    /// balloon), and a migration that reshuffles the pool's shares must not do that either.
    public static func footprintMiB(_ spec: VMSpec) -> Int {
        spec.memoryMiB + 64 + spec.memoryMiB / 16
    }

    /// The cgroup `cpu.shares` a VM's domain cgroup has (libvirt leaves the kernel's 1024 when unset).
    static func vmCPUShares(_ spec: VMSpec) -> Int {
        spec.resources?.cpu?.shares?.cpuShares(vcpus: spec.cpus) ?? 1024
    }

    /// The VM's own CPU limit as it reaches a cgroup (nil: no CFS quota on its domain cgroup).
    static func vmCPULimit(_ spec: VMSpec, coreMHz: Int) -> Int? {
        guard let l = spec.resources?.cpu?.limitMHz, l < max(1, coreMHz) * spec.cpus else { return nil }
        return l
    }

    /// Every host's pool settings: for each host that is given, every pool of the tree (so a partition
    /// exists wherever a VM of the pool may arrive), parents before children.
    public static func divvy(pools: [ClusterManifest.ResourcePool], vms: [Placed], hosts: [String: HostFacts]) -> [String: [HostPoolSetting]] {
        let tree = ResourcePoolTree(pools: pools, vms: vms.map(\.spec))
        guard !pools.isEmpty, tree.effective.count == Set(pools.map(\.name)).count else { return [:] }
        let byName = Dictionary(pools.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var children: [String: [String]] = [:]
        var roots: [String] = []
        for p in pools where byName[p.name] == p {
            if let parent = p.parent, byName[parent] != nil { children[parent, default: []].append(p.name) } else { roots.append(p.name) }
        }
        // Parents before children.
        var order: [String] = []
        var queue = roots
        while !queue.isEmpty {
            let n = queue.removeFirst()
            order.append(n)
            queue += children[n] ?? []
        }
        func path(_ name: String) -> [String] {
            var out = [name]
            var cur = byName[name]?.parent
            while let c = cur, byName[c] != nil { out.insert(c, at: 0); cur = byName[c]?.parent }
            return out
        }
        let hostNames = hosts.keys.sorted()
        let placed = vms.filter { hosts[$0.host] != nil }

        // Direct VMs per pool and host.
        var direct: [String: [String: [VMSpec]]] = [:]
        for v in placed {
            if let rp = v.spec.resourcePool, byName[rp] != nil { direct[rp, default: [:]][v.host, default: []].append(v.spec) }
        }

        struct Acc { var cpuW = 0, memW = 0, cpuRes = 0, memRes = 0, cpuFloor = 0, memFloor = 0, vms = 0 }
        // Bottom-up: weights, reservations and floors of each subtree per host.
        var acc: [String: [String: Acc]] = [:]
        var resCPU: [String: [String: Int]] = [:]
        var resMem: [String: [String: Int]] = [:]
        for name in order.reversed() {
            var a: [String: Acc] = [:]
            for h in hostNames {
                let facts = hosts[h]!
                var x = Acc()
                for s in direct[name]?[h] ?? [] {
                    x.cpuW += s.cpus * max(1, facts.coreMHz)
                    x.memW += s.memoryMiB
                    x.cpuRes += s.resources?.cpu?.reservationMHz ?? 0
                    x.memRes += s.resources?.memory?.reservationMiB ?? 0
                    x.cpuFloor = max(x.cpuFloor, vmCPULimit(s, coreMHz: facts.coreMHz) ?? 0)
                    x.memFloor += footprintMiB(s)
                    x.vms += 1
                }
                for c in children[name] ?? [] {
                    let y = acc[c]![h]!
                    x.cpuW += y.cpuW
                    x.memW += y.memW
                    x.cpuRes += resCPU[c]![h]!
                    x.memRes += resMem[c]![h]!
                    x.cpuFloor = max(x.cpuFloor, y.cpuFloor)
                    x.memFloor += y.memFloor
                    x.vms += y.vms
                }
                a[h] = x
            }
            let eff = tree.effective[name] ?? .init()
            resCPU[name] = spread(eff.cpuMHz, base: a.mapValues(\.cpuRes), weights: a.mapValues(\.cpuW), hosts: hostNames)
            resMem[name] = spread(eff.memoryMiB, base: a.mapValues(\.memRes), weights: a.mapValues(\.memW), hosts: hostNames)
            acc[name] = a
        }

        // Top-down: limits within the nearest limited ancestor's, above the floors.
        // Per pool, host → limit (a host absent: no limit of the pool's own there).
        var cpuLimit: [String: [String: Int]] = [:]
        var memLimit: [String: [String: Int]] = [:]
        // What caps a pool's subtree on a host: its own limit there, else its nearest limited ancestor's.
        var cpuCap: [String: [String: Int]] = [:]
        var memCap: [String: [String: Int]] = [:]
        for name in order {
            let p = byName[name]!
            let a = acc[name]!
            let parent = p.parent.flatMap { byName[$0] != nil ? $0 : nil }
            let cpuShare = p.cpu?.limitMHz.map { split($0, weights: a.mapValues(\.cpuW), hosts: hostNames) }
            let memShare = p.memory?.limitMiB.map { split($0, weights: a.mapValues(\.memW), hosts: hostNames) }
            var cl: [String: Int] = [:], ml: [String: Int] = [:], cc: [String: Int] = [:], mc: [String: Int] = [:]
            for h in hostNames {
                let capC = parent.flatMap { cpuCap[$0]![h] }
                let capM = parent.flatMap { memCap[$0]![h] }
                let floorC = max(a[h]!.cpuFloor, resCPU[name]![h]!)
                let floorM = max(a[h]!.memFloor, resMem[name]![h]!)
                cl[h] = cpuShare.map { s in max(floorC, min(capC ?? Int.max, s[h]!)) }
                ml[h] = memShare.map { s in max(floorM, min(capM ?? Int.max, s[h]!)) }
                cc[h] = cl[h] ?? capC
                mc[h] = ml[h] ?? capM
            }
            cpuLimit[name] = cl
            memLimit[name] = ml
            cpuCap[name] = cc
            memCap[name] = mc
        }

        // Shares: base per pool, raised so that reservations hold under contention among siblings.
        var shares: [String: [String: Int]] = [:]
        for h in hostNames {
            let facts = hosts[h]!
            var levels: [String?: [String]] = [nil: roots]
            for (k, v) in children { levels[k] = v }
            for (parent, kids) in levels where !kids.isEmpty {
                let capacity = parent.map { resCPU[$0]![h]! } ?? facts.totalMHz
                let vmsHere = parent == nil
                    ? placed.filter { $0.host == h && ($0.spec.resourcePool.flatMap { byName[$0] } == nil) }.map(\.spec)
                    : direct[parent!]?[h] ?? []
                let fixed = vmsHere.map(vmCPUShares)
                let base = kids.map { poolCPUShares(byName[$0]!.cpu?.shares) }
                let need = kids.map { k -> Double in
                    capacity > 0 ? Double(resCPU[k]![h]!) / Double(capacity) : 0
                }
                let out = reservationShares(base: base, fractions: need, fixedSiblings: fixed)
                for (i, k) in kids.enumerated() { shares[k, default: [:]][h] = out[i] }
            }
        }

        var result: [String: [HostPoolSetting]] = [:]
        for h in hostNames {
            result[h] = order.map { name in
                let p = byName[name]!
                return HostPoolSetting(
                    name: name, parent: p.parent.flatMap { byName[$0] != nil ? $0 : nil }, path: path(name),
                    cpuShares: shares[name]?[h] ?? poolCPUShares(p.cpu?.shares),
                    cpuLimitMHz: cpuLimit[name]![h], cpuReservationMHz: resCPU[name]![h]!,
                    memoryLimitMiB: memLimit[name]![h], memoryReservationMiB: resMem[name]![h]!,
                    vms: acc[name]![h]!.vms)
            }
        }
        return result
    }

    /// `total` split over hosts by weight (largest remainder, so the parts add up to `total`); every
    /// host gets the whole `total` when no host has weight (nothing runs there to share it).
    static func split(_ total: Int, weights: [String: Int], hosts: [String]) -> [String: Int] {
        let sum = hosts.reduce(0) { $0 + (weights[$1] ?? 0) }
        guard sum > 0 else { return Dictionary(uniqueKeysWithValues: hosts.map { ($0, total) }) }
        var out: [String: Int] = [:]
        var rem: [(String, Int)] = []
        var given = 0
        for h in hosts {
            let w = weights[h] ?? 0
            guard w > 0 else { out[h] = total; continue }
            let exact = total * w
            out[h] = exact / sum
            given += exact / sum
            rem.append((h, exact % sum))
        }
        for (h, _) in rem.sorted(by: { $0.1 != $1.1 ? $0.1 > $1.1 : $0.0 < $1.0 }).prefix(max(0, total - given)) {
            out[h]! += 1
        }
        return out
    }

    /// A reservation over hosts: each host's `base` (what its VMs and child pools reserve there) plus the
    /// rest of `total` split by weight; hosts without weight keep their base.
    static func spread(_ total: Int, base: [String: Int], weights: [String: Int], hosts: [String]) -> [String: Int] {
        let baseSum = hosts.reduce(0) { $0 + (base[$1] ?? 0) }
        let rest = max(0, total - baseSum)
        let sum = hosts.reduce(0) { $0 + (weights[$1] ?? 0) }
        guard rest > 0, sum > 0 else { return Dictionary(uniqueKeysWithValues: hosts.map { ($0, base[$0] ?? 0) }) }
        let extra = split(rest, weights: weights, hosts: hosts)
        return Dictionary(uniqueKeysWithValues: hosts.map { h in (h, (base[h] ?? 0) + ((weights[h] ?? 0) > 0 ? extra[h]! : 0)) })
    }

    /// Shares for sibling partitions whose proportional part of their parent must be at least
    /// `fractions[i]`, beside siblings whose shares are fixed (VMs). Partitions whose base shares already
    /// give them enough keep them; the others get just enough (water-filling).
    public static func reservationShares(base: [Int], fractions: [Double], fixedSiblings: [Int]) -> [Int] {
        let f = fractions.map { min(max($0, 0), 1) }
        // Reservations that would take the whole parent are scaled to leave the others a sliver.
        let total = f.reduce(0, +)
        let scale = total > 0.98 ? 0.98 / total : 1
        let need = f.map { $0 * scale }
        var raised = Set<Int>()
        while true {
            let free = Double(fixedSiblings.reduce(0, +)) + base.indices.filter { !raised.contains($0) }.reduce(0.0) { $0 + Double(base[$1]) }
            let taken = raised.reduce(0.0) { $0 + need[$1] }
            guard free > 0 else {
                // Every sibling is a raised partition: shares in proportion to the reservations.
                return base.indices.map { i in max(2, min(262_144, Int((need[i] * 10_000).rounded(.up)))) }
            }
            // With the raised ones at exactly their fraction, what the others get.
            let everyone = free / (1 - taken)
            let short = base.indices.filter { !raised.contains($0) && Double(base[$0]) / everyone < need[$0] - 1e-12 }
            if short.isEmpty {
                return base.indices.map { i in
                    raised.contains(i) ? max(2, min(262_144, Int((need[i] * everyone).rounded(.up)))) : base[i]
                }
            }
            raised.formUnion(short)
        }
    }

    /// The libvirt partition of a pool path (`<resource><partition>`): `/machine/gold/silver`.
    public static func partition(_ path: [String]) -> String {
        "/machine" + path.map { "/" + $0 }.joined()
    }

    /// The cgroup directory libvirt maps a partition component to (cgroupfs without systemd): the name
    /// with a `.partition` suffix, prefixed with `_` where it would read as a controller's file.
    public static func cgroupDirectory(_ component: String) -> String {
        let name = "\(component).partition"
        let controllers = ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "net_cls", "perf_event", "name=systemd"]
        if component.hasPrefix("_") || component.hasPrefix(".") || controllers.contains(component) || component.hasPrefix("cgroup") && name.hasPrefix("cgroup.") {
            return "_" + name
        }
        return name
    }
}

/// One resource pool as one host enforces it (the agent's `PUT /v1/resource-pools`).
public struct HostPoolSetting: Codable, Sendable, Equatable {
    public var name: String
    public var parent: String?
    /// Root-to-leaf pool names.
    public var path: [String]
    public var cpuShares: Int
    /// nil: no limit of its own on this host (a parent's still applies).
    public var cpuLimitMHz: Int?
    public var cpuReservationMHz: Int
    public var memoryLimitMiB: Int?
    public var memoryReservationMiB: Int
    /// Running VMs of the pool's subtree on this host.
    public var vms: Int
    public init(
        name: String, parent: String?, path: [String], cpuShares: Int, cpuLimitMHz: Int?, cpuReservationMHz: Int,
        memoryLimitMiB: Int?, memoryReservationMiB: Int, vms: Int
    ) {
        self.name = name
        self.parent = parent
        self.path = path
        self.cpuShares = cpuShares
        self.cpuLimitMHz = cpuLimitMHz
        self.cpuReservationMHz = cpuReservationMHz
        self.memoryLimitMiB = memoryLimitMiB
        self.memoryReservationMiB = memoryReservationMiB
        self.vms = vms
    }
}

/// The cgroup files a pool's partition gets on one host, for cgroup v1 (cgroupfs, one hierarchy per
/// controller) and v2 (the unified hierarchy).
public enum PoolCgroupValues {
    public static let periodMicros = 100_000

    /// A MHz limit as a CFS quota per `periodMicros` on cores of `coreMHz` (at least 1 ms; at most
    /// 2^50 µs, so no figure can trap the conversion — the agent bounds its input far below).
    public static func quotaMicros(limitMHz: Int, coreMHz: Int) -> Int {
        let q = (Double(max(0, limitMHz)) / Double(max(1, coreMHz)) * Double(periodMicros)).rounded()
        return max(1000, Int(min(q, Double(1 << 50))))
    }

    /// MiB as bytes, saturating at 2^62 instead of wrapping.
    public static func bytes(mib: Int) -> Int64 {
        mib <= 0 ? 0 : mib >= 1 << 42 ? 1 << 62 : Int64(mib) << 20
    }

    /// cgroup v1: controller → [(file, value)], in the order they are written.
    public static func v1(_ s: HostPoolSetting, coreMHz: Int) -> [String: [(String, String)]] {
        [
            "cpu": [
                ("cpu.shares", String(s.cpuShares)),
                ("cpu.cfs_quota_us", s.cpuLimitMHz.map { String(quotaMicros(limitMHz: $0, coreMHz: coreMHz)) } ?? "-1"),
            ],
            "memory": [
                ("memory.limit_in_bytes", s.memoryLimitMiB.map { String(bytes(mib: $0)) } ?? "-1"),
                ("memory.soft_limit_in_bytes", String(bytes(mib: s.memoryReservationMiB))),
            ],
        ]
    }

    /// cgroup v2 (unified): [(file, value)].
    public static func v2(_ s: HostPoolSetting, coreMHz: Int) -> [(String, String)] {
        [
            ("cpu.weight", String(weight(shares: s.cpuShares))),
            ("cpu.max", (s.cpuLimitMHz.map { String(quotaMicros(limitMHz: $0, coreMHz: coreMHz)) } ?? "max") + " \(periodMicros)"),
            ("memory.max", s.memoryLimitMiB.map { String(bytes(mib: $0)) } ?? "max"),
            ("memory.low", String(bytes(mib: s.memoryReservationMiB))),
        ]
    }

    /// cgroup v1 shares (2...262144) as a v2 weight (1...10000), as systemd maps them.
    public static func weight(shares: Int) -> Int {
        let s = min(262_144, max(2, shares))
        return 1 + (s - 2) * 9999 / 262_142
    }

    /// The inverse of `weight`, for reading v2 back in v1 terms.
    public static func shares(weight: Int) -> Int {
        let w = min(10_000, max(1, weight))
        return 2 + (w - 1) * 262_142 / 9999
    }
}
