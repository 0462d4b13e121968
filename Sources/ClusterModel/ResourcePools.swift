/// Hierarchical resource pools and their admission control, vSphere style.
///
/// A pool's *effective* reservation is what it takes from its parent: its own reservation, or, when
/// its reservation is expandable (the default), the larger of that and what its children (pools and
/// VMs) reserve. Admission control: a non-expandable pool's children fit in its reservation; every
/// pool's effective reservation fits under its limit; the root pools plus VMs outside any pool fit in
/// the cluster.
public struct ResourcePoolTree: Sendable {
    public struct Amounts: Sendable, Equatable {
        public var cpuMHz: Int
        public var memoryMiB: Int
        public init(cpuMHz: Int = 0, memoryMiB: Int = 0) {
            self.cpuMHz = cpuMHz
            self.memoryMiB = memoryMiB
        }
        static func + (a: Amounts, b: Amounts) -> Amounts {
            Amounts(cpuMHz: a.cpuMHz + b.cpuMHz, memoryMiB: a.memoryMiB + b.memoryMiB)
        }
    }

    public let pools: [ClusterManifest.ResourcePool]
    let index: [String: Int]
    /// Effective reservation of each pool (nil when the tree has a cycle).
    public private(set) var effective: [String: Amounts] = [:]
    /// What the root level takes: root pools plus VMs in no pool.
    public private(set) var rootReservation = Amounts()

    public init(pools: [ClusterManifest.ResourcePool], vms: [VMSpec]) {
        self.pools = pools
        var index: [String: Int] = [:]
        for (i, p) in pools.enumerated() where index[p.name] == nil { index[p.name] = i }
        self.index = index
        guard Self.cycles(pools: pools, index: index).isEmpty else { return }
        var vmReservations: [String: Amounts] = [:]
        var root = Amounts()
        for vm in vms {
            let r = Amounts(cpuMHz: vm.resources?.cpu?.reservationMHz ?? 0, memoryMiB: vm.resources?.memory?.reservationMiB ?? 0)
            if let rp = vm.resourcePool, index[rp] != nil {
                vmReservations[rp, default: Amounts()] = vmReservations[rp, default: Amounts()] + r
            } else {
                root = root + r
            }
        }
        var children: [String: [String]] = [:]
        for p in pools { if let parent = p.parent, index[parent] != nil { children[parent, default: []].append(p.name) } }
        var memo: [String: Amounts] = [:]
        func eff(_ name: String) -> Amounts {
            if let m = memo[name] { return m }
            let p = pools[index[name]!]
            let childSum = (children[name] ?? []).map(eff).reduce(vmReservations[name] ?? Amounts(), +)
            let own = Amounts(cpuMHz: p.cpu?.reservationMHz ?? 0, memoryMiB: p.memory?.reservationMiB ?? 0)
            let e = Amounts(
                cpuMHz: (p.cpu?.expandable ?? true) ? max(own.cpuMHz, childSum.cpuMHz) : own.cpuMHz,
                memoryMiB: (p.memory?.expandable ?? true) ? max(own.memoryMiB, childSum.memoryMiB) : own.memoryMiB)
            memo[name] = e
            return e
        }
        for p in pools { _ = eff(p.name) }
        effective = memo
        for p in pools where p.parent == nil || index[p.parent!] == nil { root = root + (memo[p.name] ?? Amounts()) }
        rootReservation = root
        self.children = children
        self.vmReservations = vmReservations
    }

    private var children: [String: [String]] = [:]
    private var vmReservations: [String: Amounts] = [:]

    /// The pool and every pool below it.
    public func subtree(_ name: String) -> Set<String> {
        var out: Set<String> = [name]
        var queue = [name]
        while let n = queue.popLast() {
            for c in children[n] ?? [] where out.insert(c).inserted { queue.append(c) }
        }
        return out
    }

    /// What a pool's children (pools and VMs) reserve.
    public func childReservation(_ name: String) -> Amounts {
        (children[name] ?? []).compactMap { effective[$0] }.reduce(vmReservations[name] ?? Amounts(), +)
    }

    /// Every parent chain that loops, as the index of a pool on it and the loop's names.
    static func cycles(pools: [ClusterManifest.ResourcePool], index: [String: Int]) -> [(Int, [String])] {
        var out: [(Int, [String])] = []
        var reported = Set<String>()
        for (i, p) in pools.enumerated() {
            var seen: [String] = [p.name]
            var cur = p.parent
            while let c = cur, let j = index[c] {
                if let k = seen.firstIndex(of: c) {
                    let loop = Array(seen[k...]) + [c]
                    if !loop.contains(where: reported.contains) {
                        reported.formUnion(loop)
                        out.append((i, loop))
                    }
                    break
                }
                seen.append(c)
                cur = pools[j].parent
            }
        }
        return out
    }
}

extension ClusterManifest {
    func validateResourcePools(known: Set<String>?) -> [ValidationProblem] {
        guard let pools = resourcePools else { return [] }
        var out: [ValidationProblem] = []
        for (i, p) in pools.enumerated() {
            let path = "resourcePools[\(i)]"
            if let parent = p.parent {
                if parent == p.name { out.append(.init("\(path).parent", "a pool cannot be its own parent")) }
                else if let known, !known.contains(parent) { out.append(.init("\(path).parent", "no resource pool named \(parent) in this document")) }
            }
            if let c = p.cpu {
                if let r = c.reservationMHz, r < 0 { out.append(.init("\(path).cpu.reservationMHz", "must be at least 0")) }
                if let l = c.limitMHz, l < 1 { out.append(.init("\(path).cpu.limitMHz", "must be at least 1")) }
                if let l = c.limitMHz, l > 100_000_000 { out.append(.init("\(path).cpu.limitMHz", "must be at most 100000000")) }
                if let r = c.reservationMHz, r > 100_000_000 { out.append(.init("\(path).cpu.reservationMHz", "must be at most 100000000")) }
                if let l = c.limitMHz, let r = c.reservationMHz, l < r { out.append(.init("\(path).cpu.limitMHz", "must not be below reservationMHz (\(r))")) }
                if case .custom(let n) = c.shares, n < 2 || n > 262_144 { out.append(.init("\(path).cpu.shares", "must be between 2 and 262144")) }
            }
            if let m = p.memory {
                if let r = m.reservationMiB, r < 0 { out.append(.init("\(path).memory.reservationMiB", "must be at least 0")) }
                if let l = m.limitMiB, l < 1 { out.append(.init("\(path).memory.limitMiB", "must be at least 1")) }
                if let l = m.limitMiB, l > 1 << 34 { out.append(.init("\(path).memory.limitMiB", "must be at most 17179869184")) }
                if let r = m.reservationMiB, r > 1 << 34 { out.append(.init("\(path).memory.reservationMiB", "must be at most 17179869184")) }
                if let l = m.limitMiB, let r = m.reservationMiB, l < r { out.append(.init("\(path).memory.limitMiB", "must not be below reservationMiB (\(r))")) }
                if case .custom(let n) = m.shares, n < 1 { out.append(.init("\(path).memory.shares", "must be at least 1")) }
            }
        }
        var index: [String: Int] = [:]
        for (i, p) in pools.enumerated() where index[p.name] == nil { index[p.name] = i }
        let cycles = ResourcePoolTree.cycles(pools: pools, index: index)
        for (i, loop) in cycles {
            out.append(.init("resourcePools[\(i)].parent", "parents form a cycle: \(loop.joined(separator: " -> "))"))
        }
        guard cycles.isEmpty, out.isEmpty else { return out }

        let tree = ResourcePoolTree(pools: pools, vms: vms ?? [])
        for (i, p) in pools.enumerated() {
            let path = "resourcePools[\(i)]"
            let kids = tree.childReservation(p.name)
            let eff = tree.effective[p.name] ?? .init()
            if p.cpu?.expandable == false, kids.cpuMHz > (p.cpu?.reservationMHz ?? 0) {
                out.append(.init("\(path).cpu.reservationMHz", "children reserve \(kids.cpuMHz) MHz, more than this pool's \(p.cpu?.reservationMHz ?? 0) MHz (not expandable)"))
            }
            if p.memory?.expandable == false, kids.memoryMiB > (p.memory?.reservationMiB ?? 0) {
                out.append(.init("\(path).memory.reservationMiB", "children reserve \(kids.memoryMiB) MiB, more than this pool's \(p.memory?.reservationMiB ?? 0) MiB (not expandable)"))
            }
            if let l = p.memory?.limitMiB {
                let members = tree.subtree(p.name)
                let configured = (vms ?? []).filter { ($0.powerState ?? "running") == "running" && $0.resourcePool.map(members.contains) == true }
                    .reduce(0) { $0 + $1.memoryMiB }
                if configured > l {
                    out.append(.init("\(path).memory.limitMiB", "its running VMs have \(configured) MiB of memory, above its limit of \(l) MiB (a guest held below its memory is killed: KVM hosts do not balloon here)"))
                }
            }
            if let l = p.cpu?.limitMHz, eff.cpuMHz > l {
                out.append(.init("\(path).cpu.limitMHz", "reservations below this pool take \(eff.cpuMHz) MHz, above its limit of \(l) MHz"))
            }
            if let l = p.memory?.limitMiB, eff.memoryMiB > l {
                out.append(.init("\(path).memory.limitMiB", "reservations below this pool take \(eff.memoryMiB) MiB, above its limit of \(l) MiB"))
            }
        }
        if let hosts, !hosts.isEmpty, hosts.allSatisfy({ $0.capacity != nil }) {
            let mib = hosts.reduce(0) { $0 + $1.capacity!.memoryMiB }
            let mhz = hosts.reduce(0) { $0 + $1.capacity!.cpus * ($1.capacity!.cpuMHz ?? 2000) }
            if tree.rootReservation.memoryMiB > mib {
                out.append(.init("resourcePools", "reservations take \(tree.rootReservation.memoryMiB) MiB, more than the cluster's \(mib) MiB"))
            }
            if tree.rootReservation.cpuMHz > mhz {
                out.append(.init("resourcePools", "reservations take \(tree.rootReservation.cpuMHz) MHz, more than the cluster's \(mhz) MHz"))
            }
        }
        return out
    }
}
