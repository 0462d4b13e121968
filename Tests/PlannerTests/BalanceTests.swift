import Placement
import Planner
import Testing
import TestSupport

/// Random measured demand for the VMs of a cluster: CPU between idle and all of its vCPUs busy, memory
/// between a tenth and all of its size; hot spots on a few hosts.
func randomDemand(_ state: ClusterState, _ vms: [String: PlacementVM], seed: Int) -> [String: Demand] {
    var r = SplitMix(seed &* 7919 &+ 1)
    var out: [String: Demand] = [:]
    let hot = Set(state.hosts.indices.filter { _ in r.int(0...4) == 0 })
    for (i, h) in state.hosts.enumerated() {
        for n in h.vms.sorted() {
            guard let vm = vms[n] else { continue }
            let busy = hot.contains(i) ? Double(r.int(60...100)) / 100 : Double(r.int(0...40)) / 100
            out[n] = Demand(cpuMHz: busy * Double(vm.cpus) * 2000, memoryMiB: Double(vm.memoryMiB) * Double(r.int(10...100)) / 100)
        }
    }
    return out
}

/// A price that grows with the VM's memory; now and then a migration that would not converge.
func price(_ vms: [String: PlacementVM], seed: Int) -> (String, String, String) -> MoveCost {
    { vm, _, to in
        let mib = Double(vms[vm]?.memoryMiB ?? 1024)
        let h = (vm.hashValue ^ to.hashValue ^ seed) & 0xff
        return MoveCost(seconds: 0.3 + mib / 1024, converges: h != 7)
    }
}

@Suite struct BalanceProperties {
    @Test(arguments: 0..<300)
    func balanceNeverGetsWorseAndEveryStepIsSafe(seed: Int) {
        let (start, vms) = spreadCluster(seed)
        let demand = randomDemand(start, vms, seed: seed)
        let level = 2 + seed % 4
        let balancer = Balancer(migrationThreshold: level, minGain: 0.005, maxMoves: 24)
        let plan = balancer.plan(start, vms: vms, demand: demand, cost: price(vms, seed: seed))
        var state = start
        let index = Dictionary(uniqueKeysWithValues: state.hosts.enumerated().map { ($1.name, $0) })
        var previous = Balancer.imbalance(state, vms: vms, demand: demand)
        #expect(abs(previous - plan.imbalanceBefore) < 1e-9)
        var moved = Set<String>()
        for m in plan.moves {
            #expect(!moved.contains(m.vm), "seed \(seed): \(m.vm) moves at most once")
            moved.insert(m.vm)
            let from = index[m.from]!, to = index[m.to]!
            let vm = vms[m.vm]!
            #expect(state.location[m.vm] == from)
            #expect(state.hosts[to].state == .connected && state.hosts[from].state == .connected)
            let c = VMContext(vm, state: state)
            for f in Filters.all where f.applies(to: c) {
                #expect(f.admits(c, host: state.hosts[to], index: to), "seed \(seed): \(f.name) refuses \(m.vm) on \(m.to): \(f.reason(c, host: state.hosts[to], index: to))")
            }
            state.hosts[from].remove(vm)
            state.location[m.vm] = nil
            state.commit(vm, to: to)
            #expect(state.hosts[to].usedMemoryMiB <= state.hosts[to].memoryCapacityMiB)
            #expect(state.hosts[to].usedVCPUs <= state.hosts[to].vcpuCapacity)
            #expect(state.hosts[to].reservedMHz <= state.hosts[to].cpuMHzCapacity)
            let now = Balancer.imbalance(state, vms: vms, demand: demand)
            // The generator places by the filters: no rule is broken, so every move is a balancing one.
            #expect(m.reason.hasPrefix("balance"))
            #expect(now < previous - 0.005 + 1e-9, "seed \(seed): \(m.vm) \(m.from)→\(m.to) lowers the imbalance by the minimum gain (\(previous) → \(now))")
            previous = now
        }
        #expect(abs(previous - plan.imbalanceAfter) < 1e-9)
        #expect(plan.imbalanceAfter <= plan.imbalanceBefore)
        #expect(plan.moves.count <= 24)
        // Anti-affinity holds at the end.
        for (name, apart) in state.apart {
            for other in apart where state.location[name] != nil {
                #expect(state.location[other] != state.location[name], "seed \(seed): \(name) and \(other) apart")
            }
        }
        // Batches: a host gives or receives within a batch, within the limits; batches in order.
        var last = 0
        for m in plan.moves {
            #expect(m.batch >= last)
            last = m.batch
        }
        for b in Set(plan.moves.map(\.batch)) {
            let inBatch = plan.moves.filter { $0.batch == b }
            #expect(Set(inBatch.map(\.from)).isDisjoint(with: Set(inBatch.map(\.to))))
            for h in Set(inBatch.map(\.from)) { #expect(inBatch.filter { $0.from == h }.count <= 2) }
            for h in Set(inBatch.map(\.to)) { #expect(inBatch.filter { $0.to == h }.count <= 2) }
        }
        // Every plan says why it stopped.
        #expect(plan.kept.contains { $0.vm == nil })
        if plan.imbalanceAfter > plan.tolerance && plan.moves.count < 24 {
            #expect(plan.kept.contains { $0.reason.hasPrefix("no move lowers") })
        }
    }

    @Test func hotHostSpillsToTheIdleOne() {
        var state = ClusterState(hosts: (0..<2).map { PlacementHost(name: "h\($0)", vcpuCapacity: 8, memoryCapacityMiB: 8192, cpuMHzCapacity: 4000) })
        var vms: [String: PlacementVM] = [:]
        var demand: [String: Demand] = [:]
        for k in 0..<4 {
            let vm = PlacementVM(name: "v\(k)", cpus: 1, memoryMiB: 512)
            state.commit(vm, to: 0)
            vms[vm.name] = vm
            demand[vm.name] = Demand(cpuMHz: 1000, memoryMiB: 256)
        }
        let plan = Balancer().plan(state, vms: vms, demand: demand) { _, _, _ in MoveCost(seconds: 1, converges: true) }
        #expect(plan.moves.count == 2, "two of the four busy VMs go to the idle host: \(plan.moves)")
        #expect(plan.moves.allSatisfy { $0.from == "h0" && $0.to == "h1" })
        #expect(plan.imbalanceAfter < 1e-9)
        #expect(plan.kept.contains { $0.reason.hasPrefix("balanced") })
    }

    @Test func cheaperMigrationsAreChosenFirst() {
        // Two VMs with the same demand; the one with the larger memory costs more to move.
        var state = ClusterState(hosts: (0..<2).map { PlacementHost(name: "h\($0)", vcpuCapacity: 8, memoryCapacityMiB: 16384, cpuMHzCapacity: 4000) })
        let big = PlacementVM(name: "big", cpus: 1, memoryMiB: 8192)
        let small = PlacementVM(name: "small", cpus: 1, memoryMiB: 512)
        state.commit(big, to: 0)
        state.commit(small, to: 0)
        let demand = ["big": Demand(cpuMHz: 1500, memoryMiB: 300), "small": Demand(cpuMHz: 1500, memoryMiB: 300)]
        let plan = Balancer().plan(state, vms: ["big": big, "small": small], demand: demand) { vm, _, _ in
            MoveCost(seconds: vm == "big" ? 40 : 1, converges: true)
        }
        #expect(plan.moves.map(\.vm) == ["small"])
        #expect(plan.kept.contains { $0.vm == "big" })
    }

    @Test func brokenAntiAffinityIsFixedFirstAndThresholdOneOnlyFixesRules() {
        var state = ClusterState(hosts: (0..<3).map { PlacementHost(name: "h\($0)", vcpuCapacity: 8, memoryCapacityMiB: 8192, cpuMHzCapacity: 4000) })
        let a = PlacementVM(name: "a", cpus: 1, memoryMiB: 1024, antiAffinity: ["b"])
        let b = PlacementVM(name: "b", cpus: 1, memoryMiB: 512)
        let c = PlacementVM(name: "c", cpus: 1, memoryMiB: 512)
        state.commit(a, to: 0)
        state.commit(b, to: 0)
        state.commit(c, to: 0)
        state.noteConstraints(a)
        let demand = ["a": Demand(cpuMHz: 1000, memoryMiB: 900), "b": Demand(cpuMHz: 1000, memoryMiB: 400), "c": Demand(cpuMHz: 1000, memoryMiB: 400)]
        let plan = Balancer(migrationThreshold: 1).plan(state, vms: ["a": a, "b": b, "c": c], demand: demand) { _, _, _ in MoveCost(seconds: 1, converges: true) }
        #expect(plan.moves.count == 1)
        #expect(plan.moves.first?.vm == "b", "the lighter of the pair moves")
        #expect(plan.moves.first?.reason.hasPrefix("anti-affinity") == true)
        #expect(plan.kept.contains { $0.reason.contains("threshold 1") })
    }

    @Test func nonConvergingMigrationsAreNotChosen() {
        var state = ClusterState(hosts: (0..<2).map { PlacementHost(name: "h\($0)", vcpuCapacity: 8, memoryCapacityMiB: 8192, cpuMHzCapacity: 4000) })
        let v = PlacementVM(name: "v", cpus: 2, memoryMiB: 1024)
        let w = PlacementVM(name: "w", cpus: 2, memoryMiB: 1024)
        state.commit(v, to: 0)
        state.commit(w, to: 0)
        let demand = ["v": Demand(cpuMHz: 3000, memoryMiB: 1000), "w": Demand(cpuMHz: 3000, memoryMiB: 1000)]
        let plan = Balancer().plan(state, vms: ["v": v, "w": w], demand: demand) { _, _, _ in MoveCost(seconds: 5, converges: false) }
        #expect(plan.moves.isEmpty)
        #expect(plan.kept.contains { $0.vm == "v" && $0.reason.contains("would not converge") })
    }
}

@Suite struct PowerAdvice {
    func samples(_ peaks: [(Int64, Double)]) -> [UtilizationSample] {
        peaks.map { UtilizationSample(timeMs: $0.0, loads: [HostLoad(host: "h1", cpu: $0.1, memory: 0.1), HostLoad(host: "h2", cpu: 0.05, memory: 0.05)]) }
    }
    let standby = [StandbyHost(name: "h3", cpuMHz: 4000, memoryMiB: 8192), StandbyHost(name: "h4", cpuMHz: 8000, memoryMiB: 8192)]

    @Test func wakesOnlyAfterTheWholeWindow() {
        let advisor = PowerAdvisor(settings: PowerSettings(powerOnSustainSeconds: 10, powerOffSustainSeconds: 60))
        // High for 6 s only: wait.
        var s = samples([(0, 0.3), (4000, 0.9), (6000, 0.95), (10000, 0.95)])
        #expect(advisor.advise(s, now: 10000, standby: standby).action == .none)
        // High for the whole 10 s: wake the biggest standby host.
        s = samples([(0, 0.9), (4000, 0.9), (8000, 0.95), (10000, 0.95)])
        let a = advisor.advise(s, now: 10000, standby: standby)
        #expect(a.action == .powerOn && a.hosts == ["h4"], "\(a)")
        #expect(a.reason.contains("h1"))
        // Nothing to wake.
        #expect(advisor.advise(s, now: 10000, standby: []).action == .none)
    }

    @Test func packsOnlyAfterTheLongerLowWindow() {
        let advisor = PowerAdvisor(settings: PowerSettings(powerOnSustainSeconds: 10, powerOffSustainSeconds: 60))
        var s = samples(stride(from: Int64(0), through: 50000, by: 5000).map { ($0, 0.1) })
        #expect(advisor.advise(s, now: 50000, standby: []).action == .none, "the history does not reach back 60 s")
        s = samples(stride(from: Int64(0), through: 70000, by: 5000).map { ($0, $0 == 30000 ? 0.5 : 0.1) })
        #expect(advisor.advise(s, now: 70000, standby: []).action == .none, "one sample in the window above 45 %")
        s = samples(stride(from: Int64(0), through: 100000, by: 5000).map { ($0, $0 == 30000 ? 0.5 : 0.1) })
        #expect(advisor.advise(s, now: 100000, standby: []).action == .consolidate)
        // In the target range: nothing.
        s = samples(stride(from: Int64(0), through: 100000, by: 5000).map { ($0, 0.6) })
        #expect(advisor.advise(s, now: 100000, standby: standby).action == .none)
    }

    @Test func consolidationStaysBelowTheTargetUtilization() {
        // Four hosts, each with one VM using 40 % of a host's CPU: packing two per host would reach 80 %.
        var state = ClusterState(hosts: (0..<4).map { PlacementHost(name: "h\($0)", vcpuCapacity: 32, memoryCapacityMiB: 65536, cpuMHzCapacity: 10000) })
        var vms: [String: PlacementVM] = [:]
        var demand: [String: Demand] = [:]
        for h in 0..<4 {
            let vm = PlacementVM(name: "v\(h)", cpus: 4, memoryMiB: 1024)
            state.commit(vm, to: h)
            vms[vm.name] = vm
            demand[vm.name] = Demand(cpuMHz: 4000, memoryMiB: 512)
        }
        #expect(Consolidator().plan(state, vms: vms).hostsUsed == 1, "by configured size alone, one host")
        let plan = Consolidator(maxLoad: 0.63, demand: demand).plan(state, vms: vms)
        #expect(plan.hostsUsed == 4, "every pair would exceed 63 %: \(plan)")
        demand = demand.mapValues { _ in Demand(cpuMHz: 1500, memoryMiB: 512) }
        #expect(Consolidator(maxLoad: 0.63, demand: demand).plan(state, vms: vms).hostsUsed == 1, "4 × 15 % fit on one host")
    }
}

extension BalanceProperties {
    /// The property runs are not vacuous: most random clusters with hot spots get balancing moves.
    @Test func mostRandomClustersAreRebalanced() {
        var withMoves = 0, better = 0
        for seed in 0..<100 {
            let (start, vms) = spreadCluster(seed)
            let demand = randomDemand(start, vms, seed: seed)
            let plan = Balancer(migrationThreshold: 4, minGain: 0.005).plan(start, vms: vms, demand: demand, cost: price(vms, seed: seed))
            if !plan.moves.isEmpty { withMoves += 1 }
            if plan.imbalanceAfter < plan.imbalanceBefore * 0.9 { better += 1 }
        }
        #expect(withMoves >= 60, "\(withMoves) of 100 plans move something")
        #expect(better >= 50, "\(better) of 100 plans cut the imbalance by a tenth or more")
    }
}
