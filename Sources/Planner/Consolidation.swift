import Placement

/// One live migration of a plan.
public struct Move: Sendable, Equatable, Codable {
    public var vm: String
    public var from: String
    public var to: String
    /// Moves of one batch run at the same time (within the per-host migration limits); batches run in order.
    public var batch: Int
    public var reason: String

    public init(vm: String, from: String, to: String, batch: Int, reason: String) {
        self.vm = vm
        self.from = from
        self.to = to
        self.batch = batch
        self.reason = reason
    }
}

/// What a plan left alone, and why.
public struct Kept: Sendable, Equatable, Codable {
    /// A host (`host` set) that stays powered on, or a VM (`vm` set) that stays where it is.
    public var host: String?
    public var vm: String?
    public var reason: String

    public init(host: String? = nil, vm: String? = nil, reason: String) {
        self.host = host
        self.vm = vm
        self.reason = reason
    }
}

public struct ConsolidationPlan: Sendable, Equatable, Codable {
    /// In execution order; `batch` groups the ones that may run together.
    public var moves: [Move]
    public var hostsToPowerOff: [String]
    /// Hosts that run VMs once the plan is carried out.
    public var hostsUsed: Int
    /// Hosts that stay powered on although empty (the spare headroom).
    public var spareHosts: [String]
    public var kept: [Kept]
    /// max(ceil(sum vCPUs / per-host vCPUs), ceil(sum MiB / per-host MiB)) over the connected hosts'
    /// largest capacity: no plan can use fewer hosts.
    public var lowerBound: Int
}

/// Consolidation (DPM): empties the hosts that are easiest to empty into the fullest hosts that accept
/// their VMs, as long as the whole host can be emptied, and proposes to power the empty ones off,
/// keeping `spareHosts` of them on as headroom.
///
/// Pure, over placement's snapshot: every move is checked with placement's filters (host state,
/// capacity net of reservations, site, allowed hosts, anti-affinity) against the state with every
/// earlier move applied, so executing the moves in order never overcommits a host nor breaks a rule.
/// Hosts that receive VMs never lose any, so the moves of a batch can run in any order. VMs tied by
/// affinity move together, to one host, in one batch. Only VMs on hosts that are emptied move.
public struct Consolidator: Sendable {
    public var spareHosts: Int
    /// Concurrent migrations per host (out and in), for batching.
    public var maxOutgoingPerHost: Int
    public var maxIncomingPerHost: Int

    /// When set, a host receives VMs only while its measured demand (`demand`) stays at or below this
    /// share of its capacity (DPM's target utilization): packing never creates a hot spot.
    public var maxLoad: Double?
    public var demand: [String: Demand]
    /// Hosts that stay on whatever happens (e.g. no power driver can switch them off): never emptied,
    /// never proposed for power-off, and may receive VMs. By name, with the reason.
    public var keepOn: [String: String]

    public init(
        spareHosts: Int = 0, maxOutgoingPerHost: Int = 2, maxIncomingPerHost: Int = 2, maxLoad: Double? = nil, demand: [String: Demand] = [:],
        keepOn: [String: String] = [:]
    ) {
        self.keepOn = keepOn
        self.maxLoad = maxLoad
        self.demand = demand
        self.spareHosts = spareHosts
        self.maxOutgoingPerHost = maxOutgoingPerHost
        self.maxIncomingPerHost = maxIncomingPerHost
    }

    /// `vms`: every VM of the state (constraints already noted in it), by name.
    public func plan(_ start: ClusterState, vms: [String: PlacementVM]) -> ConsolidationPlan {
        var state = start
        var kept: [Kept] = []
        let connected = state.hosts.indices.filter { state.hosts[$0].state == .connected }
        var moves: [(vm: String, from: Int, to: Int, reason: String, group: Int)] = []
        var emptied = Set<Int>()
        var group = 0

        // Candidates: the least loaded first (fewest MiB, then fewest VMs): cheapest to empty.
        let order = connected.filter { !state.hosts[$0].vms.isEmpty }.sorted {
            let a = state.hosts[$0], b = state.hosts[$1]
            return (a.usedMemoryMiB, a.vms.count, a.name) < (b.usedMemoryMiB, b.vms.count, b.name)
        }
        // Hosts that received VMs stay on: emptying them later would move those VMs twice.
        var receivers = Set<Int>()
        var load = state.hosts.map { Balancer.demand(of: $0, vms: vms, demand) }
        for h in order {
            if let why = keepOn[state.hosts[h].name] {
                kept.append(Kept(host: state.hosts[h].name, reason: "stays on: \(why)"))
                continue
            }
            if receivers.contains(h) {
                kept.append(Kept(host: state.hosts[h].name, reason: "stays on: receives VMs from emptied hosts"))
                continue
            }
            // Receivers: connected hosts that keep running (not emptied, not this one).
            var trial = state
            var trialLoad = load
            var trialMoves: [(String, Int, Int, String, Int)] = []
            var stuck: String?
            // Affinity groups on this host move as one unit; the biggest units first (best fit).
            var units: [[PlacementVM]] = []
            var seen = Set<String>()
            for name in trial.hosts[h].vms.sorted() where !seen.contains(name) {
                guard let vm = vms[name] else { stuck = "\(name) is not described"; break }
                var unit = [vm]
                seen.insert(name)
                var frontier = [name]
                while let n = frontier.popLast() {
                    for p in trial.together[n] ?? [] where !seen.contains(p) && trial.location[p] == h {
                        if let pv = vms[p] { unit.append(pv); seen.insert(p); frontier.append(p) }
                    }
                }
                units.append(unit)
            }
            units.sort { ($0.reduce(0) { $0 + $1.memoryMiB }, $0.count) > ($1.reduce(0) { $0 + $1.memoryMiB }, $1.count) }
            if stuck == nil {
                for unit in units {
                    guard let to = bestReceiver(unit, from: h, state: trial, excluded: emptied, load: trialLoad) else {
                        stuck = unit.count == 1
                            ? "\(unit[0].name) fits on no host that stays on"
                            : "\(unit.map(\.name).joined(separator: "+")) (affinity) fit together on no host that stays on"
                        if maxLoad != nil { stuck! += " below the target utilization" }
                        break
                    }
                    group += 1
                    for vm in unit {
                        let d = Balancer.demand(vm, demand)
                        trialLoad[to] += d
                        trialLoad[h] -= d
                        trial.hosts[h].remove(vm)
                        trial.commit(vm, to: to)
                        trialMoves.append((vm.name, h, to, "empties \(trial.hosts[h].name)", group))
                    }
                }
            }
            if let stuck {
                kept.append(Kept(host: state.hosts[h].name, reason: "stays on: \(stuck)"))
                continue
            }
            state = trial
            load = trialLoad
            emptied.insert(h)
            for m in trialMoves { receivers.insert(m.2) }
            moves += trialMoves.map { (vm: $0.0, from: $0.1, to: $0.2, reason: $0.3, group: $0.4) }
        }

        // Already empty connected hosts plus the emptied ones: all but `spareHosts` go off; the spares
        // are the biggest of them.
        for h in connected where state.hosts[h].vms.isEmpty {
            guard let why = keepOn[state.hosts[h].name] else { continue }
            kept.append(Kept(host: state.hosts[h].name, reason: "stays on although empty: \(why)"))
        }
        let empty = connected.filter { state.hosts[$0].vms.isEmpty && keepOn[state.hosts[$0].name] == nil }.sorted {
            (state.hosts[$0].memoryCapacityMiB, state.hosts[$0].vcpuCapacity, state.hosts[$1].name)
                > (state.hosts[$1].memoryCapacityMiB, state.hosts[$1].vcpuCapacity, state.hosts[$0].name)
        }
        let spares = Array(empty.prefix(spareHosts))
        let off = Array(empty.dropFirst(spareHosts))
        for s in spares { kept.append(Kept(host: state.hosts[s].name, reason: "spare: kept on as headroom")) }
        for h in connected where !state.hosts[h].vms.isEmpty && !kept.contains(where: { $0.host == state.hosts[h].name }) {
            kept.append(Kept(host: state.hosts[h].name, reason: "stays on: keeps its VMs"))
        }

        return ConsolidationPlan(
            moves: batches(moves, names: state.hosts.map(\.name)),
            hostsToPowerOff: off.map { state.hosts[$0].name }.sorted(),
            hostsUsed: state.hosts.indices.filter { !state.hosts[$0].vms.isEmpty }.count,
            spareHosts: spares.map { state.hosts[$0].name }.sorted(),
            kept: kept,
            lowerBound: Self.lowerBound(start))
    }

    /// The fullest connected host (least free memory, then fewest free vCPUs) that admits the whole
    /// unit: its capacity for the sum, every other rule for each member.
    func bestReceiver(_ unit: [PlacementVM], from: Int, state: ClusterState, excluded: Set<Int>, load: [Demand]) -> Int? {
        let mem = unit.reduce(0) { $0 + $1.memoryMiB }
        let cpus = unit.reduce(0) { $0 + $1.cpus }
        let mhz = unit.reduce(0) { $0 + $1.reservationMHz }
        // The unit is judged as if it had already left its host (its own members are no obstacle).
        var view = state
        for vm in unit { view.hosts[from].remove(vm); view.location[vm.name] = nil }
        let contexts = unit.map { VMContext($0, state: view) }
        var best: Int?
        var bestKey = (Int.max, Int.max)
        let unitDemand = Balancer.demand(of: unit, demand)
        for (i, host) in view.hosts.enumerated() where i != from && !excluded.contains(i) && host.state == .connected && !host.vms.isEmpty {
            guard mem <= host.freeMemoryMiB, cpus <= host.freeVCPUs, mhz <= host.freeMHz else { continue }
            if let maxLoad {
                let after = load[i] + unitDemand
                guard after.cpuMHz <= maxLoad * Double(host.cpuMHzCapacity), after.memoryMiB <= maxLoad * Double(host.memoryCapacityMiB)
                else { continue }
            }
            let ok = contexts.allSatisfy { c in
                Filters.all.allSatisfy { f in
                    f.name == "capacity" || (f.name == "affinity" && unit.count > 1) || !f.applies(to: c) || f.admits(c, host: host, index: i)
                }
            }
            guard ok else { continue }
            let key = (host.freeMemoryMiB - mem, host.freeVCPUs - cpus)
            if key < bestKey {
                bestKey = key
                best = i
            }
        }
        return best
    }

    /// Groups consecutive moves into batches: a unit joins the current batch unless a host it leaves
    /// or enters is at its limit there.
    func batches(_ moves: [(vm: String, from: Int, to: Int, reason: String, group: Int)], names: [String]) -> [Move] {
        var out: [Move] = []
        var batch = 1
        var outgoing: [Int: Int] = [:]
        var incoming: [Int: Int] = [:]
        var i = 0
        while i < moves.count {
            var j = i
            while j < moves.count && moves[j].group == moves[i].group { j += 1 }
            let unit = moves[i..<j]
            let from = unit.first!.from, to = unit.first!.to
            if outgoing[from, default: 0] + unit.count > maxOutgoingPerHost || incoming[to, default: 0] + unit.count > maxIncomingPerHost {
                if !(outgoing.isEmpty && incoming.isEmpty) {
                    batch += 1
                    outgoing = [:]
                    incoming = [:]
                }
            }
            outgoing[from, default: 0] += unit.count
            incoming[to, default: 0] += unit.count
            for m in unit { out.append(Move(vm: m.vm, from: names[m.from], to: names[m.to], batch: batch, reason: m.reason)) }
            i = j
        }
        return out
    }

    /// max(ceil(sum vCPUs / largest host vCPUs), ceil(sum MiB / largest host MiB)) over connected hosts.
    public static func lowerBound(_ state: ClusterState) -> Int {
        let hosts = state.hosts.filter { $0.state == .connected }
        guard let maxCPU = hosts.map(\.vcpuCapacity).max(), let maxMem = hosts.map(\.memoryCapacityMiB).max(), maxCPU > 0, maxMem > 0
        else { return 0 }
        let cpus = state.hosts.reduce(0) { $0 + $1.usedVCPUs }
        let mem = state.hosts.reduce(0) { $0 + $1.usedMemoryMiB }
        return max((cpus + maxCPU - 1) / maxCPU, (mem + maxMem - 1) / maxMem)
    }
}
