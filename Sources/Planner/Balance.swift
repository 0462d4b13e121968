import Placement

/// What a VM really uses, as its host measured it: CPU in MHz (cores busy × core speed) and memory in
/// MiB (the guest's resident memory). DRS balances on this, not on configured sizes.
public struct Demand: Sendable, Equatable, Codable {
    public var cpuMHz: Double
    public var memoryMiB: Double
    public init(cpuMHz: Double, memoryMiB: Double) {
        self.cpuMHz = cpuMHz
        self.memoryMiB = memoryMiB
    }
}

extension Demand {
    public static let zero = Demand(cpuMHz: 0, memoryMiB: 0)
    public static func + (a: Demand, b: Demand) -> Demand { Demand(cpuMHz: a.cpuMHz + b.cpuMHz, memoryMiB: a.memoryMiB + b.memoryMiB) }
    public static func - (a: Demand, b: Demand) -> Demand { Demand(cpuMHz: a.cpuMHz - b.cpuMHz, memoryMiB: a.memoryMiB - b.memoryMiB) }
    public static func += (a: inout Demand, b: Demand) { a = a + b }
    public static func -= (a: inout Demand, b: Demand) { a = a - b }
}

/// A migration's price as the vMotion pricing predicts it.
public struct MoveCost: Sendable, Equatable {
    public var seconds: Double
    public var converges: Bool
    public init(seconds: Double, converges: Bool) {
        self.seconds = seconds
        self.converges = converges
    }
}

/// A host's demand as a share of its capacity (0...1, above 1 when overloaded).
public struct HostLoad: Sendable, Equatable, Codable {
    public var host: String
    public var cpu: Double
    public var memory: Double
    public init(host: String, cpu: Double, memory: Double) {
        self.host = host
        self.cpu = cpu
        self.memory = memory
    }
}

public struct BalancePlan: Sendable, Equatable, Codable {
    /// In execution order; moves of one batch may run together.
    public var moves: [Move]
    /// VMs considered and left where they are, and why; or one entry for the whole cluster.
    public var kept: [Kept]
    public var imbalanceBefore: Double
    public var imbalanceAfter: Double
    /// The imbalance the migration threshold tolerates.
    public var tolerance: Double
    public var loadsBefore: [HostLoad]
    public var loadsAfter: [HostLoad]
}

/// DRS load balancing: moves VMs from the busiest hosts to the idlest ones until the cluster's
/// imbalance is within the tolerance of the migration threshold, each move chosen for the most
/// imbalance removed per second of migration (its predicted price), and only when it removes at
/// least `minGain`.
///
/// The imbalance is the spread of host loads, sqrt(var(cpu load) + var(memory load)) over the connected
/// hosts, loads being measured demand over capacity. Every balancing move lowers it, so a plan never
/// leaves the cluster less balanced than it found it. Rule violations (anti-affinity pairs on one
/// host) are fixed first, whatever they cost. Every move passes placement's filters (capacity net of
/// reservations, site, allowed hosts, anti-affinity, affinity) against the state with every earlier
/// move applied; a VM moves at most once per plan.
public struct Balancer: Sendable {
    /// 1 (conservative: rule violations only) ... 5 (aggressive), as vSphere's migration threshold.
    public var migrationThreshold: Int
    /// The least imbalance a move must remove to be worth its migration.
    public var minGain: Double
    public var maxMoves: Int
    public var maxOutgoingPerHost: Int
    public var maxIncomingPerHost: Int
    /// Busiest hosts searched for VMs to move and idlest hosts searched as destinations, per move.
    public var searchWidth: Int

    public init(
        migrationThreshold: Int = 3, minGain: Double = 0.01, maxMoves: Int = 32, maxOutgoingPerHost: Int = 2,
        maxIncomingPerHost: Int = 2, searchWidth: Int = 16
    ) {
        self.migrationThreshold = migrationThreshold
        self.minGain = minGain
        self.maxMoves = maxMoves
        self.maxOutgoingPerHost = maxOutgoingPerHost
        self.maxIncomingPerHost = maxIncomingPerHost
        self.searchWidth = searchWidth
    }

    /// The imbalance tolerated at each migration threshold (level 1 tolerates any).
    public static func tolerance(_ level: Int) -> Double {
        switch level {
        case ...1: return .infinity
        case 2: return 0.2
        case 3: return 0.1
        case 4: return 0.05
        default: return 0.02
        }
    }

    /// Demand of a VM the hosts did not measure: its configured memory, no CPU.
    static func demand(_ vm: PlacementVM, _ demand: [String: Demand]) -> Demand {
        demand[vm.name] ?? Demand(cpuMHz: 0, memoryMiB: Double(vm.memoryMiB))
    }

    /// What these VMs use together.
    static func demand(of vms: some Sequence<PlacementVM>, _ demand: [String: Demand]) -> Demand {
        vms.reduce(.zero) { $0 + Self.demand($1, demand) }
    }

    /// What the VMs of a host use together (names the map does not know count with nothing).
    static func demand(of host: PlacementHost, vms: [String: PlacementVM], _ demand: [String: Demand]) -> Demand {
        Self.demand(of: host.vms.compactMap { vms[$0] }, demand)
    }

    public static func loads(_ state: ClusterState, vms: [String: PlacementVM], demand: [String: Demand]) -> [HostLoad] {
        state.hosts.filter { $0.state == .connected }.map { h in
            let d = Self.demand(of: h, vms: vms, demand)
            return HostLoad(
                host: h.name, cpu: h.cpuMHzCapacity > 0 ? d.cpuMHz / Double(h.cpuMHzCapacity) : 0,
                memory: h.memoryCapacityMiB > 0 ? d.memoryMiB / Double(h.memoryCapacityMiB) : 0)
        }
    }

    public static func imbalance(_ loads: [HostLoad]) -> Double {
        guard loads.count > 1 else { return 0 }
        let n = Double(loads.count)
        func variance(_ xs: [Double]) -> Double {
            let mean = xs.reduce(0, +) / n
            return max(0, xs.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / n)
        }
        return (variance(loads.map(\.cpu)) + variance(loads.map(\.memory))).squareRoot()
    }

    public static func imbalance(_ state: ClusterState, vms: [String: PlacementVM], demand: [String: Demand]) -> Double {
        imbalance(loads(state, vms: vms, demand: demand))
    }

    /// `cost(vm, from, to)`: the migration's price. `pinned`: VMs that must not move now (migrating).
    public func plan(
        _ start: ClusterState, vms: [String: PlacementVM], demand: [String: Demand], pinned: Set<String> = [],
        cost: (String, String, String) -> MoveCost
    ) -> BalancePlan {
        var state = start
        let connected = state.hosts.indices.filter { state.hosts[$0].state == .connected }
        let tolerance = Self.tolerance(migrationThreshold)
        let before = Self.loads(start, vms: vms, demand: demand)
        let imbalanceBefore = Self.imbalance(before)
        var kept: [Kept] = []
        var moves: [(vm: String, from: Int, to: Int, reason: String)] = []
        var moved = Set<String>()

        // Per-host demand sums and capacities, kept current as moves are applied.
        var cpu = [Double](repeating: 0, count: state.hosts.count)
        var mem = [Double](repeating: 0, count: state.hosts.count)
        for h in connected {
            for n in state.hosts[h].vms {
                if let vm = vms[n] {
                    let d = Self.demand(vm, demand)
                    cpu[h] += d.cpuMHz
                    mem[h] += d.memoryMiB
                }
            }
        }
        let capC = state.hosts.map { Double(max($0.cpuMHzCapacity, 1)) }
        let capM = state.hosts.map { Double(max($0.memoryCapacityMiB, 1)) }
        let n = Double(connected.count)
        func current() -> Double {
            Self.imbalance(connected.map { HostLoad(host: "", cpu: cpu[$0] / capC[$0], memory: mem[$0] / capM[$0]) })
        }

        /// Whether every filter admits `vm` on `to` with the state as it is now.
        func admits(_ vm: PlacementVM, _ to: Int) -> (Bool, String?) {
            let c = VMContext(vm, state: state)
            for f in Filters.all where f.applies(to: c) {
                if !f.admits(c, host: state.hosts[to], index: to) { return (false, "\(f.name): \(f.reason(c, host: state.hosts[to], index: to))") }
            }
            return (true, nil)
        }
        func apply(_ vm: PlacementVM, from: Int, to: Int, reason: String) {
            let d = Self.demand(vm, demand)
            state.hosts[from].remove(vm)
            state.location[vm.name] = nil
            state.commit(vm, to: to)
            cpu[from] -= d.cpuMHz
            mem[from] -= d.memoryMiB
            cpu[to] += d.cpuMHz
            mem[to] += d.memoryMiB
            moved.insert(vm.name)
            moves.append((vm.name, from, to, reason))
        }

        // 1. Rule violations: VMs that must stay apart but share a host. The one with less demand moves, to
        //    the admitting host that leaves the cluster best balanced.
        for h in connected {
            for name in state.hosts[h].vms.sorted() where !moved.contains(name) && !pinned.contains(name) {
                guard let vm = vms[name], let apart = state.apart[name],
                    let other = apart.sorted().first(where: { state.location[$0] == h && !moved.contains($0) })
                else { continue }
                guard moves.count < maxMoves else { break }
                let mover: PlacementVM
                if let o = vms[other], !pinned.contains(other),
                    Self.demand(o, demand).memoryMiB < Self.demand(vm, demand).memoryMiB
                {
                    mover = o
                } else {
                    mover = vm
                }
                var best: (Int, Double)?
                for to in connected where to != h && admits(mover, to).0 {
                    let d = Self.demand(mover, demand)
                    cpu[h] -= d.cpuMHz; mem[h] -= d.memoryMiB; cpu[to] += d.cpuMHz; mem[to] += d.memoryMiB
                    let i = current()
                    cpu[h] += d.cpuMHz; mem[h] += d.memoryMiB; cpu[to] -= d.cpuMHz; mem[to] -= d.memoryMiB
                    if best == nil || i < best!.1 { best = (to, i) }
                }
                if let (to, _) = best {
                    apply(mover, from: h, to: to, reason: "anti-affinity: \(mover.name) must not share \(state.hosts[h].name) with \(mover.name == name ? other : name)")
                } else {
                    kept.append(Kept(vm: mover.name, reason: "breaks anti-affinity on \(state.hosts[h].name) but no host admits it"))
                }
            }
        }

        // 2. Balance.
        if migrationThreshold <= 1 {
            kept.append(Kept(reason: "migration threshold 1: only rule violations are fixed"))
        } else if connected.count < 2 {
            kept.append(Kept(reason: "fewer than two connected hosts: nothing to balance"))
        } else {
            // Why each considered VM stayed (the last reason wins: the one at the end of the search).
            var why: [String: String] = [:]
            var stop = ""
            while true {
                let now = current()
                if now <= tolerance {
                    stop = "balanced: imbalance \(Self.fmt(now)) within the tolerance \(Self.fmt(tolerance)) of migration threshold \(migrationThreshold)"
                    break
                }
                if moves.count >= maxMoves {
                    stop = "stopped at \(maxMoves) moves (imbalance \(Self.fmt(now)))"
                    break
                }
                // Sources: the busiest hosts; destinations: the idlest (by their larger load).
                let load = { (h: Int) in max(cpu[h] / capC[h], mem[h] / capM[h]) }
                let byLoad = connected.sorted { (load($0), state.hosts[$1].name) > (load($1), state.hosts[$0].name) }
                let sources = Array(byLoad.prefix(searchWidth))
                let targets = Array(byLoad.reversed().prefix(searchWidth))
                var s1c = 0.0, s2c = 0.0, s1m = 0.0, s2m = 0.0
                for h in connected {
                    let c = cpu[h] / capC[h], m = mem[h] / capM[h]
                    s1c += c; s2c += c * c; s1m += m; s2m += m * m
                }
                var best: (vm: PlacementVM, from: Int, to: Int, gain: Double, cost: Double, score: Double)?
                for from in sources {
                    for name in state.hosts[from].vms.sorted() where !moved.contains(name) {
                        guard let vm = vms[name] else { continue }
                        if pinned.contains(name) { why[name] = "migrating now"; continue }
                        let d = Self.demand(vm, demand)
                        let fc0 = cpu[from] / capC[from], fm0 = mem[from] / capM[from]
                        let fc1 = (cpu[from] - d.cpuMHz) / capC[from], fm1 = (mem[from] - d.memoryMiB) / capM[from]
                        var bestGain = -Double.infinity
                        var refusal: String?
                        var slow: String?
                        for to in targets where to != from {
                            let tc0 = cpu[to] / capC[to], tm0 = mem[to] / capM[to]
                            let tc1 = (cpu[to] + d.cpuMHz) / capC[to], tm1 = (mem[to] + d.memoryMiB) / capM[to]
                            let a1c = s1c - fc0 - tc0 + fc1 + tc1, a2c = s2c - fc0 * fc0 - tc0 * tc0 + fc1 * fc1 + tc1 * tc1
                            let a1m = s1m - fm0 - tm0 + fm1 + tm1, a2m = s2m - fm0 * fm0 - tm0 * tm0 + fm1 * fm1 + tm1 * tm1
                            let after = (max(0, a2c / n - (a1c / n) * (a1c / n)) + max(0, a2m / n - (a1m / n) * (a1m / n))).squareRoot()
                            let gain = now - after
                            guard gain >= minGain && gain > 1e-9 else { bestGain = max(bestGain, gain); continue }
                            let (ok, reason) = admits(vm, to)
                            guard ok else { refusal = "\(state.hosts[to].name) refuses it (\(reason!))"; continue }
                            let price = cost(name, state.hosts[from].name, state.hosts[to].name)
                            guard price.converges else {
                                slow = "its migration to \(state.hosts[to].name) would not converge (dirty rate above the link)"
                                continue
                            }
                            bestGain = max(bestGain, gain)
                            let score = gain / max(price.seconds, 1)
                            if best == nil || score > best!.score || (score == best!.score && name < best!.vm.name) {
                                best = (vm, from, to, gain, price.seconds, score)
                            }
                        }
                        if bestGain < minGain {
                            why[name] = refusal ?? slow ?? (bestGain == -.infinity
                                ? "no idler host to take it"
                                : "no move gains the minimum \(Self.fmt(minGain)) (best \(Self.fmt(max(0, bestGain))))")
                        } else {
                            why[name] = "other moves balance more per migration second"
                        }
                    }
                }
                guard let b = best else {
                    stop = "no move lowers the imbalance \(Self.fmt(now)) by at least \(Self.fmt(minGain))"
                    break
                }
                apply(b.vm, from: b.from, to: b.to, reason: "balance: imbalance \(Self.fmt(now)) → \(Self.fmt(now - b.gain)), priced \(Self.fmt(b.cost)) s")
                why[b.vm.name] = nil
            }
            kept.append(Kept(reason: stop))
            for (name, reason) in why.sorted(by: { $0.key < $1.key }) where !moved.contains(name) {
                kept.append(Kept(vm: name, reason: reason))
            }
        }

        let after = Self.loads(state, vms: vms, demand: demand)
        return BalancePlan(
            moves: Self.batches(moves, names: state.hosts.map(\.name), maxOut: maxOutgoingPerHost, maxIn: maxIncomingPerHost),
            kept: kept, imbalanceBefore: imbalanceBefore, imbalanceAfter: Self.imbalance(after), tolerance: tolerance,
            loadsBefore: before, loadsAfter: after)
    }

    /// Batches of moves that can run at once: in a batch a host only gives or only receives, within the
    /// per-host limits, so whatever order the batch's moves finish in, no host holds more than the plan
    /// checked at that point. Order is kept: a move never runs before one that came earlier in the plan.
    static func batches(_ moves: [(vm: String, from: Int, to: Int, reason: String)], names: [String], maxOut: Int, maxIn: Int) -> [Move] {
        var out: [Move] = []
        var batch = 1
        var outgoing: [Int: Int] = [:]
        var incoming: [Int: Int] = [:]
        for m in moves {
            let clash = incoming[m.from] != nil || outgoing[m.to] != nil
                || outgoing[m.from, default: 0] >= maxOut || incoming[m.to, default: 0] >= maxIn
            if clash && !(outgoing.isEmpty && incoming.isEmpty) {
                batch += 1
                outgoing = [:]
                incoming = [:]
            }
            outgoing[m.from, default: 0] += 1
            incoming[m.to, default: 0] += 1
            out.append(Move(vm: m.vm, from: names[m.from], to: names[m.to], batch: batch, reason: m.reason))
        }
        return out
    }

    static func fmt(_ x: Double) -> String {
        guard x.isFinite else { return "∞" }
        let r = (x * 1000).rounded() / 1000
        return String(r)
    }
}
