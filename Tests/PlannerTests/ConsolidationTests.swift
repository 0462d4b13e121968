import Placement
import Planner
import Testing
import TestSupport

/// A seeded random cluster with its VMs spread over it (each on a host that admits it), anti-affinity
/// pairs, a few affinity pairs on one host, some pinned VMs and hosts in maintenance.
func spreadCluster(_ seed: Int) -> (ClusterState, [String: PlacementVM]) {
    var r = SplitMix(seed)
    let hostCount = r.int(2...40)
    var state = ClusterState(hosts: (0..<hostCount).map { i in
        PlacementHost(
            name: "h\(i)", site: "s\(i % 2)", state: r.int(0...12) == 0 ? .maintenance : .connected,
            vcpuCapacity: r.int(8...64), memoryCapacityMiB: r.int(8...64) * 1024, cpuMHzCapacity: r.int(8...32) * 2000)
    })
    var vms: [String: PlacementVM] = [:]
    let load = Double(r.int(10...70)) / 100
    let target = Int(Double(state.hosts.reduce(0) { $0 + $1.memoryCapacityMiB }) * load)
    var placedMiB = 0
    var i = 0
    var names: [String] = []
    while placedMiB < target && i < 2000 {
        var vm = PlacementVM(name: "v\(i)", cpus: r.int(1...4), memoryMiB: r.int(1...8) * 512, reservationMHz: r.int(0...2) * 500)
        if !names.isEmpty && r.int(0...4) == 0 { vm.antiAffinity = [names[r.int(0...(names.count - 1))]] }
        if r.int(0...15) == 0 { vm.site = "s\(r.int(0...1))" }
        if r.int(0...15) == 0 { vm.hosts = Set((0..<r.int(1...3)).map { _ in "h\(r.int(0...(hostCount - 1)))" }) }
        i += 1
        state.noteConstraints(vm)
        let context = VMContext(vm, state: state)
        let fits = state.hosts.indices.filter { h in
            Filters.all.allSatisfy { !$0.applies(to: context) || $0.admits(context, host: state.hosts[h], index: h) }
        }
        guard !fits.isEmpty else { continue }
        let h = fits[r.int(0...(fits.count - 1))]
        state.commit(vm, to: h)
        vms[vm.name] = vm
        names.append(vm.name)
        placedMiB += vm.memoryMiB
        // Now and then an affinity partner on the same host.
        if r.int(0...10) == 0 {
            var partner = PlacementVM(name: "v\(i)a", cpus: 1, memoryMiB: 512, affinity: [vm.name])
            partner.site = nil
            state.noteConstraints(partner)
            let pc = VMContext(partner, state: state)
            if Filters.all.allSatisfy({ !$0.applies(to: pc) || $0.admits(pc, host: state.hosts[h], index: h) }) {
                state.commit(partner, to: h)
                vms[partner.name] = partner
                names.append(partner.name)
            }
        }
    }
    return (state, vms)
}

@Suite struct ConsolidationProperties {
    @Test(arguments: 0..<300)
    func plansAreSafeAtEveryStep(seed: Int) {
        let (start, vms) = spreadCluster(seed)
        let spare = seed % 3
        let plan = Consolidator(spareHosts: spare).plan(start, vms: vms)
        var state = start
        let index = Dictionary(uniqueKeysWithValues: state.hosts.enumerated().map { ($1.name, $0) })
        var moved = Set<String>()
        for m in plan.moves {
            #expect(!moved.contains(m.vm), "\(m.vm) moves at most once: no churn")
            moved.insert(m.vm)
            let from = index[m.from]!, to = index[m.to]!
            let vm = vms[m.vm]!
            #expect(state.location[m.vm] == from, "\(m.vm) leaves the host it is on")
            #expect(state.hosts[to].state == .connected)
            state.hosts[from].remove(vm)
            state.location[m.vm] = nil
            let c = VMContext(vm, state: state)
            for f in Filters.all where f.name != "affinity" && f.applies(to: c) {
                #expect(f.admits(c, host: state.hosts[to], index: to), "seed \(seed): \(f.name) refuses \(m.vm) on \(m.to) at its step: \(f.reason(c, host: state.hosts[to], index: to))")
            }
            state.commit(vm, to: to)
            #expect(state.hosts[to].usedMemoryMiB <= state.hosts[to].memoryCapacityMiB)
            #expect(state.hosts[to].usedVCPUs <= state.hosts[to].vcpuCapacity)
        }
        // Affinity holds at the end: partners share a host.
        for (name, partners) in state.together {
            for p in partners where state.location[p] != nil && state.location[name] != nil && start.location[p] == start.location[name] {
                #expect(state.location[p] == state.location[name], "\(name) and \(p) stay together")
            }
        }
        // Only VMs of emptied hosts moved, and every emptied host is empty.
        let emptied = Set(plan.moves.map(\.from))
        for h in emptied { #expect(state.hosts[index[h]!].vms.isEmpty, "\(h) was emptied") }
        #expect(plan.moves.count == start.hosts.filter { emptied.contains($0.name) }.reduce(0) { $0 + $1.vms.count })
        for h in plan.hostsToPowerOff {
            #expect(state.hosts[index[h]!].vms.isEmpty)
            #expect(state.hosts[index[h]!].state == .connected)
        }
        // Receivers only gain: so the moves of a batch can run in any order.
        let receivers = Set(plan.moves.map(\.to))
        #expect(receivers.isDisjoint(with: emptied))
        // Batches within the per-host limits (an affinity unit larger than a limit goes alone).
        for b in Set(plan.moves.map(\.batch)) {
            let inBatch = plan.moves.filter { $0.batch == b }
            for h in Set(inBatch.map(\.from)) { #expect(inBatch.filter { $0.from == h }.count <= 2 || Set(inBatch.map(\.from)).count == 1) }
            for h in Set(inBatch.map(\.to)) { #expect(inBatch.filter { $0.to == h }.count <= 2 || Set(inBatch.map(\.to)).count == 1) }
        }
        // Accounting: used + off + spare = the connected hosts, and nothing beats the lower bound.
        let connected = start.hosts.filter { $0.state == .connected }.count
        let usedConnected = state.hosts.filter { $0.state == .connected && !$0.vms.isEmpty }.count
        #expect(usedConnected + plan.hostsToPowerOff.count + plan.spareHosts.count == connected)
        #expect(plan.spareHosts.count == min(spare, connected - usedConnected))
        #expect(plan.hostsUsed >= plan.lowerBound || start.hosts.contains { $0.state != .connected && !$0.vms.isEmpty })
        #expect(plan.hostsUsed <= start.hosts.filter { !$0.vms.isEmpty }.count, "never more hosts than before")
    }

    @Test func packsAnEasyClusterToItsLowerBound() {
        // 8 hosts of 32 vCPUs / 64 GiB, each a quarter full: two hosts hold it all.
        var state = ClusterState(hosts: (0..<8).map { PlacementHost(name: "h\($0)", vcpuCapacity: 32, memoryCapacityMiB: 65536, cpuMHzCapacity: 64000) })
        var vms: [String: PlacementVM] = [:]
        for h in 0..<8 {
            for k in 0..<8 {
                let vm = PlacementVM(name: "v\(h)-\(k)", cpus: 1, memoryMiB: 2048)
                state.commit(vm, to: h)
                vms[vm.name] = vm
            }
        }
        let plan = Consolidator(spareHosts: 1).plan(state, vms: vms)
        #expect(plan.lowerBound == 2)
        #expect(plan.hostsUsed == 2)
        #expect(plan.hostsToPowerOff.count == 5)
        #expect(plan.spareHosts.count == 1)
        #expect(plan.moves.count == 48, "the VMs of the six emptied hosts, once each")
    }

    @Test func antiAffinityAndPinsAreReasonsToStay() {
        var state = ClusterState(hosts: (0..<2).map { PlacementHost(name: "h\($0)", vcpuCapacity: 32, memoryCapacityMiB: 65536, cpuMHzCapacity: 64000) })
        let a = PlacementVM(name: "a", cpus: 1, memoryMiB: 1024, antiAffinity: ["b"])
        let b = PlacementVM(name: "b", cpus: 1, memoryMiB: 1024)
        state.noteConstraints(a)
        state.commit(a, to: 0)
        state.commit(b, to: 1)
        let plan = Consolidator().plan(state, vms: ["a": a, "b": b])
        #expect(plan.moves.isEmpty)
        #expect(plan.hostsToPowerOff.isEmpty)
        #expect(plan.kept.contains { $0.host == "h0" && $0.reason.contains("a fits on no host") })
    }
}
