/// The outcome of placing a batch of VMs: where each went, and for each that did not fit, why not,
/// per filter (how many hosts each filter turned away, with one example).
public struct PlacementResult: Sendable {
    public struct Placement: Sendable, Equatable, Codable {
        public var vm: String
        public var host: String
        public init(vm: String, host: String) {
            self.vm = vm
            self.host = host
        }
    }

    public struct Rejection: Sendable, Equatable, Codable {
        public var filter: String
        public var hosts: Int
        public var example: String
        public init(filter: String, hosts: Int, example: String) {
            self.filter = filter
            self.hosts = hosts
            self.example = example
        }
    }

    public struct Unplaced: Sendable, Equatable, Codable {
        public var vm: String
        public var reasons: [Rejection]
        public init(vm: String, reasons: [Rejection]) {
            self.vm = vm
            self.reasons = reasons
        }
        public var summary: String {
            reasons.map { "\($0.filter): \($0.hosts) host\($0.hosts == 1 ? "" : "s") (\($0.example))" }.joined(separator: "; ")
        }
    }

    public var placements: [Placement]
    public var unplaced: [Unplaced]
    public var state: ClusterState

    public var hostsUsed: Int { state.hosts.filter { !$0.vms.isEmpty }.count }
}

/// Places VMs one at a time: every filter must accept a host, then the strategy's weight picks
/// among the hosts left (ties go to the earlier host, so results are deterministic).
public struct Scheduler: Sendable {
    public var strategy: Strategy
    public var filters: [any PlacementFilter]

    public init(strategy: Strategy = .spread, filters: [any PlacementFilter] = Filters.all) {
        self.strategy = strategy
        self.filters = filters
    }

    /// Places `vms` in the order given (callers order them; `ordered` gives hardest-first).
    public func place(_ vms: [PlacementVM], on state: ClusterState) -> PlacementResult {
        var state = state
        for vm in vms { state.noteConstraints(vm) }
        var placements: [PlacementResult.Placement] = []
        placements.reserveCapacity(vms.count)
        var unplaced: [PlacementResult.Unplaced] = []
        for vm in vms {
            if let i = choose(vm, state: state) {
                state.commit(vm, to: i)
                placements.append(.init(vm: vm.name, host: state.hosts[i].name))
            } else {
                unplaced.append(explain(vm, state: state))
            }
        }
        return PlacementResult(placements: placements, unplaced: unplaced, state: state)
    }

    /// The best feasible host for `vm`, or nil.
    public func choose(_ vm: PlacementVM, state: ClusterState) -> Int? {
        let context = VMContext(vm, state: state)
        let active = filters.filter { $0.applies(to: context) }
        var best: Int?
        var bestScore = -Double.infinity
        state.hosts.withUnsafeBufferPointer { hosts in
            for i in hosts.indices {
                if !active.allSatisfy({ $0.admits(context, host: hosts[i], index: i) }) { continue }
                let s = score(vm, hosts[i])
                if s > bestScore {
                    best = i
                    bestScore = s
                }
            }
        }
        return best
    }

    /// Higher is better. Spread: the most free share of memory and vCPUs left after placing.
    /// Pack: the least.
    func score(_ vm: PlacementVM, _ host: PlacementHost) -> Double {
        let mem = Double(host.freeMemoryMiB - vm.memoryMiB) / Double(max(1, host.memoryCapacityMiB))
        let cpu = Double(host.freeVCPUs - vm.cpus) / Double(max(1, host.vcpuCapacity))
        let free = max(mem, cpu) * 2 + mem + cpu
        return strategy == .spread ? free : -free
    }

    /// Why no host took `vm`: for every host, the first filter that said no.
    public func explain(_ vm: PlacementVM, state: ClusterState) -> PlacementResult.Unplaced {
        let context = VMContext(vm, state: state)
        var counts: [String: (Int, String)] = [:]
        var order: [String] = []
        for (i, host) in state.hosts.enumerated() {
            for f in filters {
                if f.admits(context, host: host, index: i) { continue }
                if counts[f.name] == nil { order.append(f.name) }
                let c = counts[f.name] ?? (0, "\(host.name): \(f.reason(context, host: host, index: i))")
                counts[f.name] = (c.0 + 1, c.1)
                break
            }
        }
        if state.hosts.isEmpty { return .init(vm: vm.name, reasons: [.init(filter: "hosts", hosts: 0, example: "the cluster has no hosts")]) }
        return .init(vm: vm.name, reasons: order.map { .init(filter: $0, hosts: counts[$0]!.0, example: counts[$0]!.1) })
    }

    /// Hardest first: VMs with affinity partners and anti-affinity, then the largest.
    public static func ordered(_ vms: [PlacementVM]) -> [PlacementVM] {
        vms.enumerated().sorted { a, b in
            let ca = a.element.antiAffinity.count + a.element.affinity.count
            let cb = b.element.antiAffinity.count + b.element.affinity.count
            if ca != cb { return ca > cb }
            if a.element.memoryMiB != b.element.memoryMiB { return a.element.memoryMiB > b.element.memoryMiB }
            if a.element.cpus != b.element.cpus { return a.element.cpus > b.element.cpus }
            return a.offset < b.offset
        }.map(\.element)
    }
}
