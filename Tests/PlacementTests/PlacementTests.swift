import ClusterModel
import Foundation
import Placement
import Testing
import TestSupport

/// A seeded random cluster and a batch of VMs with random sizes and constraints.
func randomCluster(_ seed: Int) -> (ClusterState, [PlacementVM]) {
    var r = SplitMix(seed)
    let hostCount = r.int(1...24)
    let hosts = (0..<hostCount).map { i in
        PlacementHost(
            name: "h\(i)", site: "s\(i % 2)",
            state: r.int(0...9) == 0 ? .maintenance : .connected,
            vcpuCapacity: r.int(4...64), memoryCapacityMiB: r.int(1...64) * 1024, cpuMHzCapacity: r.int(4...32) * 2000)
    }
    let vmCount = r.int(1...150)
    var vms: [PlacementVM] = []
    for i in 0..<vmCount {
        var vm = PlacementVM(name: "v\(i)", cpus: r.int(1...8), memoryMiB: r.int(1...16) * 512, reservationMHz: r.int(0...3) * 500)
        if i > 0 && r.int(0...3) == 0 { vm.antiAffinity = [vms[r.int(0...(i - 1))].name] }
        if i > 0 && r.int(0...9) == 0 { let o = vms[r.int(0...(i - 1))].name; if !vm.antiAffinity.contains(o) { vm.affinity = [o] } }
        if r.int(0...5) == 0 { vm.site = "s\(r.int(0...1))" }
        if r.int(0...7) == 0 { vm.hosts = Set((0..<r.int(1...3)).map { _ in "h\(r.int(0...(hostCount - 1)))" }) }
        vms.append(vm)
    }
    return (ClusterState(hosts: hosts), vms)
}

@Suite struct PlacementProperties {
    @Test(arguments: 0..<300)
    func neverOvercommitsOrBreaksConstraints(seed: Int) {
        let (cluster, vms) = randomCluster(seed)
        for strategy in [Strategy.spread, .pack] {
            let result = Scheduler(strategy: strategy).place(Scheduler.ordered(vms), on: cluster)
            #expect(result.placements.count + result.unplaced.count == vms.count)
            let byName = Dictionary(uniqueKeysWithValues: vms.map { ($0.name, $0) })
            var where_: [String: String] = [:]
            for p in result.placements { where_[p.vm] = p.host }
            for h in result.state.hosts {
                #expect(h.usedVCPUs <= h.vcpuCapacity, "vCPUs overcommitted on \(h.name)")
                #expect(h.usedMemoryMiB <= h.memoryCapacityMiB, "memory overcommitted on \(h.name)")
                #expect(h.reservedMHz <= h.cpuMHzCapacity, "CPU reservations overcommitted on \(h.name)")
                let recount = h.vms.reduce(0) { $0 + byName[$1]!.memoryMiB }
                #expect(recount == h.usedMemoryMiB)
                if h.state != .connected { #expect(h.vms.isEmpty, "placed on a host in \(h.state)") }
            }
            for vm in vms {
                guard let at = where_[vm.name] else { continue }
                for other in vm.antiAffinity { #expect(where_[other] != at, "\(vm.name) and \(other) share \(at)") }
                if let site = vm.site { #expect(result.state.hosts.first { $0.name == at }?.site == site) }
                if let allowed = vm.hosts { #expect(allowed.contains(at)) }
                for other in vm.affinity { if let o = where_[other] { #expect(o == at, "\(vm.name) apart from \(other)") } }
                for other in vm.antiAffinity { #expect(where_[other] != at) }
            }
            for u in result.unplaced { #expect(!u.reasons.isEmpty, "an unplaced VM without a reason") }
        }
    }

    /// Unplaced VMs really had nowhere to go: placing one alone on the final state also fails.
    @Test(arguments: 0..<100)
    func unplacedMeansNoFeasibleHost(seed: Int) {
        let (cluster, vms) = randomCluster(seed)
        let scheduler = Scheduler(strategy: .pack)
        let result = scheduler.place(Scheduler.ordered(vms), on: cluster)
        let byName = Dictionary(uniqueKeysWithValues: vms.map { ($0.name, $0) })
        for u in result.unplaced { #expect(scheduler.choose(byName[u.vm]!, state: result.state) == nil) }
    }
}

@Suite struct PlacementBehaviour {
    func hosts(_ n: Int, vcpus: Int = 32, mib: Int = 65536) -> ClusterState {
        ClusterState(hosts: (1...n).map { PlacementHost(name: "h\($0)", vcpuCapacity: vcpus, memoryCapacityMiB: mib, cpuMHzCapacity: 8 * 2000) })
    }

    @Test func spreadBalancesPackFills() {
        let vms = (1...4).map { PlacementVM(name: "v\($0)", cpus: 1, memoryMiB: 1024) }
        let spread = Scheduler(strategy: .spread).place(vms, on: hosts(4))
        #expect(Set(spread.placements.map(\.host)).count == 4)
        let pack = Scheduler(strategy: .pack).place(vms, on: hosts(4))
        #expect(Set(pack.placements.map(\.host)) == ["h1"])
    }

    @Test func antiAffinitySpreadsEvenWhenPacking() {
        let vms = [
            PlacementVM(name: "a", cpus: 1, memoryMiB: 1024, antiAffinity: ["b"]),
            PlacementVM(name: "b", cpus: 1, memoryMiB: 1024),
            PlacementVM(name: "c", cpus: 1, memoryMiB: 1024, affinity: ["a"]),
        ]
        let r = Scheduler(strategy: .pack).place(vms, on: hosts(2))
        let at = Dictionary(uniqueKeysWithValues: r.placements.map { ($0.vm, $0.host) })
        #expect(at["a"] != at["b"])
        #expect(at["c"] == at["a"])
    }

    @Test func reasonsPerFilter() {
        var state = hosts(3, mib: 4096)
        state.hosts[2].state = .maintenance
        let r = Scheduler().place([PlacementVM(name: "big", cpus: 1, memoryMiB: 8192)], on: state)
        #expect(r.placements.isEmpty)
        #expect(r.unplaced.first?.reasons.map(\.filter) == ["capacity", "hostState"])
        #expect(r.unplaced.first?.reasons.first?.hosts == 2)
        #expect(r.unplaced.first?.summary.contains("memory: needs 8192 MiB, 4096 MiB free") == true)
    }

    /// A host that reported it cannot build a network (a VLAN on a kernel without 802.1q) takes no VM
    /// on that network, and the reason names the host's own words.
    @Test func hostsThatCannotBuildANetworkAreAvoided() {
        var state = hosts(2, mib: 4096)
        state.hosts[0].unusableNetworks = ["legacy": "802.1q VLAN devices are not supported by this kernel"]
        var vm = PlacementVM(name: "web", cpus: 1, memoryMiB: 512)
        vm.networks = ["legacy"]
        #expect(Scheduler().place([vm], on: state).placements.map(\.host) == [state.hosts[1].name])
        state.hosts[1].unusableNetworks = ["legacy": "no uplink bond0"]
        let r = Scheduler().place([vm], on: state)
        #expect(r.placements.isEmpty)
        #expect(r.unplaced.first?.summary.contains("cannot build network legacy: 802.1q VLAN devices are not supported") == true, "\(r.unplaced)")
        var other = vm
        other.networks = ["lan"]
        #expect(Scheduler().place([other], on: state).placements.count == 1, "other networks are not affected")
    }

    /// Golden: the reference shape (8 cores at 4:1, 64 GiB) holds exactly 32 VMs of 1 vCPU / 2 GiB per host.
    @Test func fillsExactlyTheCapacity() {
        let state = hosts(16)
        let scheduler = Scheduler(strategy: .spread)
        var s = state
        var placed = 0
        while let h = scheduler.choose(PlacementVM(name: "v\(placed)", cpus: 1, memoryMiB: 2048), state: s) {
            s.commit(PlacementVM(name: "v\(placed)", cpus: 1, memoryMiB: 2048), to: h)
            placed += 1
        }
        #expect(placed == 16 * 32)
        #expect(s.hosts.allSatisfy { $0.vms.count == 32 })
    }

    @Test func snapshotFromManifest() throws {
        let json = #"""
            {"apiVersion":"vsphere/v1","kind":"Cluster","settings":{"placement":{"strategy":"pack","cpuOvercommit":2}},
             "hosts":[{"name":"h1","capacity":{"cpus":4,"memoryMiB":8192}},{"name":"h2","capacity":{"cpus":4,"memoryMiB":8192},"state":"maintenance"}],
             "vms":[{"name":"a","cpus":2,"memoryMiB":1024,"host":"h1"},{"name":"b","cpus":1,"memoryMiB":512}]}
            """#
        let m = try ClusterManifest.decodeValidated(Data(json.utf8))
        let (state, running, pending) = ClusterSnapshot.state(m)
        #expect(state.hosts[0].vcpuCapacity == 8)
        #expect(state.hosts[0].usedVCPUs == 2)
        #expect(state.hosts[1].state == .maintenance)
        #expect(running.map(\.name) == ["a"])
        #expect(pending.map(\.name) == ["b"])
        #expect(ClusterSnapshot.strategy(m) == .pack)
    }

    /// Volumes go only where their pools have room: a host without the pool, or too little free space,
    /// is filtered with the reason; placing commits the space, so the next VM sees less.
    @Test func volumesMustFit() {
        var hosts = [
            PlacementHost(name: "h1", vcpuCapacity: 16, memoryCapacityMiB: 16384, cpuMHzCapacity: 16000),
            PlacementHost(name: "h2", vcpuCapacity: 16, memoryCapacityMiB: 16384, cpuMHzCapacity: 16000),
            PlacementHost(name: "h3", vcpuCapacity: 16, memoryCapacityMiB: 16384, cpuMHzCapacity: 16000),
        ]
        hosts[0].storageFreeGiB = ["local": 30]
        hosts[1].storageFreeGiB = ["other": 500]
        var state = ClusterState(hosts: hosts)
        var vm = PlacementVM(name: "a", cpus: 1, memoryMiB: 512)
        vm.storageGiB = ["local": 20]
        let scheduler = Scheduler(strategy: .spread)
        #expect(scheduler.choose(vm, state: state) != 1, "h2 has no such pool")
        state.hosts[2].storageFreeGiB = [:]
        #expect(scheduler.choose(vm, state: state) == 0)
        state.commit(vm, to: 0)
        #expect(state.hosts[0].storageFreeGiB?["local"] == 10)
        var b = vm
        b.name = "b"
        #expect(scheduler.choose(b, state: state) == nil, "10 GiB left, 20 needed")
        let why = scheduler.explain(b, state: state)
        #expect(why.reasons.map(\.filter) == ["storage"] && why.reasons[0].hosts == 3, "\(why)")
        #expect(why.summary.contains("needs 20 GiB, 10 GiB free"), "\(why.summary)")
        // A VM without volumes is not held back by storage.
        #expect(scheduler.choose(PlacementVM(name: "c", cpus: 1, memoryMiB: 512), state: state) != nil)
        // Removing gives the space back.
        state.hosts[0].remove(vm)
        #expect(state.hosts[0].storageFreeGiB?["local"] == 30)
    }

    @Test func diskTemplatesResolve() {
        #expect(VMSpec.Disk.templateReference("image.qcow2", pool: "local") == "local/image.qcow2")
        #expect(VMSpec.Disk.templateReference("gold/base.img", pool: "local") == "gold/base.img")
        #expect(VMSpec.Disk.templateReference("/var/lib/vsphere/templates/d.qcow2", pool: "local") == "/var/lib/vsphere/templates/d.qcow2")
        for bad in ["../x", "a/b/c", "/x/../etc/shadow", "", "-x", "Bad Pool/x", "p/.hidden"] {
            #expect(VMSpec.Disk.templateReference(bad, pool: "local") == nil, "\(bad)")
        }
        let spec = VMSpec(name: "v", cpus: 1, memoryMiB: 256, disks: [.init(pool: "local", sizeGiB: 20), .init(pool: "local", from: "t.qcow2"), .init(path: "/x.qcow2")])
        #expect(ClusterSnapshot.vm(spec).storageGiB == ["local": 21])
    }
}
