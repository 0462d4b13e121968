import ClusterModel
import Foundation
import TestSupport
import Testing

/// Property tests of the division of resource pools among hosts, on seeded random clusters.
@Suite struct PoolDivvyProperties {
    struct Case {
        var pools: [ClusterManifest.ResourcePool]
        var vms: [PoolDivvy.Placed]
        var hosts: [String: PoolDivvy.HostFacts]
    }

    /// A random pool forest (depth ≤ 3) with limits, reservations that admission accepts, and running
    /// VMs on random hosts, some with limits of their own (never above their pools').
    static func randomCase(_ seed: Int, vmLimits: Bool = true, reservations: Bool = true) -> Case {
        var r = SplitMix(seed)
        let hostCount = r.int(1...8)
        var hosts: [String: PoolDivvy.HostFacts] = [:]
        for i in 1...hostCount { hosts["h\(i)"] = .init(coreMHz: [2000, 2400, 3000][r.int(0...2)], cpus: r.int(2...32), memoryMiB: r.int(8...256) * 1024) }
        var pools: [ClusterManifest.ResourcePool] = []
        for i in 0..<r.int(1...7) {
            let parent = i == 0 || r.int(0...2) == 0 ? nil : pools[r.int(0...(i - 1))].name
            let shares: Shares = [.low, .normal, .high, .custom(r.int(2...20000))][r.int(0...3)]
            pools.append(.init(
                name: "p\(i)", parent: parent,
                cpu: .init(reservationMHz: reservations && r.int(0...2) == 0 ? r.int(0...2000) : nil, shares: shares,
                           limitMHz: r.int(0...1) == 0 ? r.int(4000...60000) : nil),
                memory: .init(reservationMiB: reservations && r.int(0...2) == 0 ? r.int(0...2048) : nil, shares: .normal,
                              limitMiB: r.int(0...1) == 0 ? r.int(8192...65536) : nil)))
        }
        var vms: [PoolDivvy.Placed] = []
        let names = hosts.keys.sorted()
        for i in 0..<r.int(0...40) {
            let pool = r.int(0...4) == 0 ? nil : pools[r.int(0...(pools.count - 1))].name
            let cpus = r.int(1...4)
            var limit: Int? = vmLimits && r.int(0...3) == 0 ? r.int(200...8000) : nil
            if let l = limit, let pool, let cap = Self.chainLimit(pool, pools) { limit = min(l, cap) }
            let spec = VMSpec(
                name: "vm\(i)", cpus: cpus, memoryMiB: r.int(1...16) * 256,
                resources: .init(cpu: .init(reservationMHz: reservations && r.int(0...3) == 0 ? r.int(0...500) : nil, shares: nil, limitMHz: limit),
                                 memory: .init(reservationMiB: reservations && r.int(0...3) == 0 ? r.int(0...256) : nil)),
                resourcePool: pool)
            vms.append(.init(spec: spec, host: names[r.int(0...(names.count - 1))]))
        }
        // Limits that admission control accepts: at least what the pool's subtree reserves.
        let tree = ResourcePoolTree(pools: pools, vms: vms.map(\.spec))
        for i in pools.indices {
            let eff = tree.effective[pools[i].name]!
            if let l = pools[i].cpu?.limitMHz, l < eff.cpuMHz { pools[i].cpu?.limitMHz = eff.cpuMHz + 1000 }
            if let l = pools[i].memory?.limitMiB, l < eff.memoryMiB { pools[i].memory?.limitMiB = eff.memoryMiB + 1024 }
        }
        // Admission control: a pool's memory limit covers its running VMs' memory.
        for i in pools.indices {
            let members = subtree(pools[i].name, pools)
            let configured = vms.filter { $0.spec.resourcePool.map(members.contains) == true }.reduce(0) { $0 + $1.spec.memoryMiB }
            if let l = pools[i].memory?.limitMiB, l < configured { pools[i].memory?.limitMiB = configured + r.int(0...2048) }
        }
        // VM limits under the (possibly raised) chain limits still hold: limits only went up.
        return Case(pools: pools, vms: vms, hosts: hosts)
    }

    static func chainLimit(_ pool: String, _ pools: [ClusterManifest.ResourcePool]) -> Int? {
        var cur: String? = pool
        var best: Int?
        while let c = cur, let p = pools.first(where: { $0.name == c }) {
            if let l = p.cpu?.limitMHz { best = min(best ?? l, l) }
            cur = p.parent
        }
        return best
    }

    static func subtree(_ pool: String, _ pools: [ClusterManifest.ResourcePool]) -> Set<String> {
        var out: Set<String> = [pool]
        var grew = true
        while grew {
            grew = false
            for p in pools where p.parent.map(out.contains) == true && !out.contains(p.name) { out.insert(p.name); grew = true }
        }
        return out
    }

    static func vmLimit(_ spec: VMSpec, _ facts: PoolDivvy.HostFacts) -> Int? {
        guard let l = spec.resources?.cpu?.limitMHz, l < facts.coreMHz * spec.cpus else { return nil }
        return l
    }

    @Test(arguments: 0..<300) func everyHostGetsEveryPoolParentsFirst(seed: Int) {
        let c = Self.randomCase(seed)
        let out = PoolDivvy.divvy(pools: c.pools, vms: c.vms, hosts: c.hosts)
        #expect(Set(out.keys) == Set(c.hosts.keys))
        for (_, settings) in out {
            #expect(settings.map(\.name).sorted() == c.pools.map(\.name).sorted())
            var seen = Set<String>()
            for s in settings {
                if let p = s.parent { #expect(seen.contains(p)) }
                #expect(s.path.last == s.name)
                #expect(PoolDivvy.partition(s.path).hasPrefix("/machine/"))
                #expect((2...262_144).contains(s.cpuShares))
                seen.insert(s.name)
            }
        }
    }

    /// The per-host reservations add up to the pool's effective reservation wherever the pool runs VMs,
    /// and each host's covers what its VMs and child pools reserve there.
    @Test(arguments: 0..<300) func reservationsAddUp(seed: Int) {
        let c = Self.randomCase(seed)
        let out = PoolDivvy.divvy(pools: c.pools, vms: c.vms, hosts: c.hosts)
        let tree = ResourcePoolTree(pools: c.pools, vms: c.vms.map(\.spec))
        for p in c.pools {
            let members = Self.subtree(p.name, c.pools)
            let running = c.vms.filter { $0.spec.resourcePool.map(members.contains) == true }
            let perHost = out.mapValues { $0.first { $0.name == p.name }! }
            if !running.isEmpty {
                #expect(perHost.values.reduce(0) { $0 + $1.cpuReservationMHz } == tree.effective[p.name]!.cpuMHz, "pool \(p.name) seed \(seed)")
                #expect(perHost.values.reduce(0) { $0 + $1.memoryReservationMiB } == tree.effective[p.name]!.memoryMiB, "pool \(p.name) seed \(seed)")
            }
            for (h, s) in perHost {
                let direct = c.vms.filter { $0.host == h && $0.spec.resourcePool == p.name }
                let kids = c.pools.filter { $0.parent == p.name }.map { k in out[h]!.first { $0.name == k.name }! }
                #expect(s.cpuReservationMHz >= direct.reduce(0) { $0 + ($1.spec.resources?.cpu?.reservationMHz ?? 0) } + kids.reduce(0) { $0 + $1.cpuReservationMHz })
                #expect(s.memoryReservationMiB >= direct.reduce(0) { $0 + ($1.spec.resources?.memory?.reservationMiB ?? 0) } + kids.reduce(0) { $0 + $1.memoryReservationMiB })
                #expect(s.vms == running.filter { $0.host == h }.count)
            }
        }
    }

    /// What the kernel (cgroup v1) accepts: on every host, a limited pool's CPU limit is at least every
    /// own limit of its VMs there and at least every limited descendant's; limits never go below the
    /// host's reservation.
    @Test(arguments: 0..<300) func limitsNestAsTheKernelRequires(seed: Int) {
        let c = Self.randomCase(seed)
        let out = PoolDivvy.divvy(pools: c.pools, vms: c.vms, hosts: c.hosts)
        for (h, settings) in out {
            let byName = Dictionary(uniqueKeysWithValues: settings.map { ($0.name, $0) })
            for s in settings {
                guard let l = s.cpuLimitMHz else { continue }
                #expect(l >= s.cpuReservationMHz)
                let members = Self.subtree(s.name, c.pools)
                for v in c.vms where v.host == h && v.spec.resourcePool.map(members.contains) == true {
                    if let vl = Self.vmLimit(v.spec, c.hosts[h]!) { #expect(l >= vl, "seed \(seed) pool \(s.name) vm \(v.spec.name)") }
                }
                let footprints = c.vms.filter { $0.host == h && $0.spec.resourcePool.map(members.contains) == true }.reduce(0) { $0 + PoolDivvy.footprintMiB($1.spec) }
                if let ml = s.memoryLimitMiB { #expect(ml >= footprints, "a guest is never held below its footprint") }
                for m in members where m != s.name {
                    if let dl = byName[m]!.cpuLimitMHz { #expect(dl <= l, "seed \(seed): \(m) above \(s.name) on \(h)") }
                }
                if let ml = s.memoryLimitMiB { #expect(ml >= s.memoryReservationMiB) }
            }
        }
    }

    /// Where no floor binds (no VM limits, no reservations), the hosts that run a pool's VMs share its
    /// limit: together at most the pool's limit; a host without them gets the whole limit.
    @Test(arguments: 0..<300) func limitsAreShared(seed: Int) {
        let c = Self.randomCase(seed, vmLimits: false, reservations: false)
        let out = PoolDivvy.divvy(pools: c.pools, vms: c.vms, hosts: c.hosts)
        for p in c.pools {
            let members = Self.subtree(p.name, c.pools)
            let hostsRunning = Set(c.vms.filter { $0.spec.resourcePool.map(members.contains) == true }.map(\.host))
            let perHost = out.mapValues { $0.first { $0.name == p.name }! }
            if let l = p.cpu?.limitMHz {
                #expect(hostsRunning.reduce(0) { $0 + perHost[$1]!.cpuLimitMHz! } <= l, "seed \(seed) pool \(p.name)")
                for (h, s) in perHost where !hostsRunning.contains(h) {
                    #expect(s.cpuLimitMHz! <= l)
                }
            } else {
                #expect(perHost.values.allSatisfy { $0.cpuLimitMHz == nil })
            }
            if let l = p.memory?.limitMiB {
                // Beyond the limit by at most QEMU's overhead, which guests need to run at all.
                let overhead = c.vms.filter { $0.spec.resourcePool.map(members.contains) == true }
                    .reduce(0) { $0 + PoolDivvy.footprintMiB($1.spec) - $1.spec.memoryMiB }
                #expect(hostsRunning.reduce(0) { $0 + perHost[$1]!.memoryLimitMiB! } <= l + overhead, "seed \(seed) pool \(p.name)")
            }
        }
    }

    /// Shares: under full contention every partition's proportional part reaches its required fraction;
    /// partitions that had enough keep their base shares.
    @Test(arguments: 0..<500) func reservationSharesHold(seed: Int) {
        var r = SplitMix(seed)
        let n = r.int(1...6)
        let base = (0..<n).map { _ in [2000, 4000, 8000, r.int(2...20000)][r.int(0...3)] }
        let fixed = (0..<r.int(0...6)).map { _ in [1024, 1000, 2000, 500][r.int(0...3)] }
        var fractions = (0..<n).map { _ in r.int(0...1) == 0 ? 0 : Double(r.int(0...600)) / 1000 }
        let sum = fractions.reduce(0, +)
        if sum > 0.98 { fractions = fractions.map { $0 * 0.98 / sum } }
        let out = PoolDivvy.reservationShares(base: base, fractions: fractions, fixedSiblings: fixed)
        let total = Double(out.reduce(0, +) + fixed.reduce(0, +))
        for i in 0..<n {
            // Within the kernel's ceiling of 262144 shares (a reservation near the whole host beside
            // many VMs would need more).
            if !out.contains(262_144) {
                #expect(Double(out[i]) / total >= fractions[i] - 0.001, "seed \(seed) i \(i): \(out) \(fixed) \(fractions)")
            }
            #expect((2...262_144).contains(out[i]))
            if Double(base[i]) / Double(base.reduce(0, +) + fixed.reduce(0, +)) >= fractions[i] + 0.05, fractions.reduce(0, +) < 0.5 {
                // Had plenty before anyone was raised: at most raised siblings took from it, it keeps its base.
                #expect(out[i] == base[i])
            }
        }
    }

    @Test func twoHostsSplitByConfiguredSize() {
        let pools = [ClusterManifest.ResourcePool(name: "gold", cpu: .init(reservationMHz: 1000, shares: .high, limitMHz: 3000), memory: .init(reservationMiB: 300, limitMiB: 900))]
        func vm(_ n: String, _ cpus: Int, _ mib: Int) -> VMSpec { VMSpec(name: n, cpus: cpus, memoryMiB: mib, resourcePool: "gold") }
        let hosts: [String: PoolDivvy.HostFacts] = ["h1": .init(coreMHz: 2000, cpus: 4, memoryMiB: 8192), "h2": .init(coreMHz: 2000, cpus: 4, memoryMiB: 8192), "h3": .init(coreMHz: 2000, cpus: 4, memoryMiB: 8192)]
        let out = PoolDivvy.divvy(pools: pools, vms: [.init(spec: vm("a", 2, 512), host: "h1"), .init(spec: vm("b", 1, 256), host: "h2")], hosts: hosts)
        let h1 = out["h1"]![0], h2 = out["h2"]![0], h3 = out["h3"]![0]
        #expect(h1.cpuLimitMHz == 2000 && h2.cpuLimitMHz == 1000 && h3.cpuLimitMHz == 3000)
        // Memory: 900 split 2:1, but never below a guest's footprint (RAM + 64 MiB + 1/16).
        #expect(h1.memoryLimitMiB == 608 && h2.memoryLimitMiB == 336 && h3.memoryLimitMiB == 900)
        #expect(h1.cpuReservationMHz + h2.cpuReservationMHz == 1000 && h3.cpuReservationMHz == 0)
        #expect(h1.memoryReservationMiB == 200 && h2.memoryReservationMiB == 100)
        #expect(h1.cpuShares == 8000 && h1.vms == 1 && h3.vms == 0)
        #expect(h1.path == ["gold"] && PoolDivvy.partition(h1.path) == "/machine/gold")
    }

    @Test func aBigReservationRaisesShares() {
        // One pool reserving 6000 of 8000 MHz beside a normal pool and two default VMs.
        let pools = [ClusterManifest.ResourcePool(name: "gold", cpu: .init(reservationMHz: 6000, shares: .low)), .init(name: "bronze")]
        let hosts: [String: PoolDivvy.HostFacts] = ["h1": .init(coreMHz: 2000, cpus: 4, memoryMiB: 8192)]
        let vms: [PoolDivvy.Placed] = [
            .init(spec: VMSpec(name: "g", cpus: 1, memoryMiB: 256, resourcePool: "gold"), host: "h1"),
            .init(spec: VMSpec(name: "b", cpus: 1, memoryMiB: 256, resourcePool: "bronze"), host: "h1"),
            .init(spec: VMSpec(name: "x", cpus: 1, memoryMiB: 256), host: "h1"),
            .init(spec: VMSpec(name: "y", cpus: 1, memoryMiB: 256), host: "h1"),
        ]
        let out = PoolDivvy.divvy(pools: pools, vms: vms, hosts: hosts)["h1"]!
        let gold = out.first { $0.name == "gold" }!, bronze = out.first { $0.name == "bronze" }!
        #expect(bronze.cpuShares == 4000)
        #expect(Double(gold.cpuShares) / Double(gold.cpuShares + bronze.cpuShares + 2048) >= 0.75 - 0.001)
    }

    @Test func cgroupNames() {
        #expect(PoolDivvy.cgroupDirectory("gold") == "gold.partition")
        #expect(PoolDivvy.cgroupDirectory("cpu") == "_cpu.partition")
        #expect(PoolDivvy.cgroupDirectory("memory") == "_memory.partition")
        #expect(PoolDivvy.cgroupDirectory("cpus") == "cpus.partition")
        #expect(PoolDivvy.partition(["gold", "silver"]) == "/machine/gold/silver")
    }

    @Test func cgroupValues() {
        let s = HostPoolSetting(name: "gold", parent: nil, path: ["gold"], cpuShares: 8000, cpuLimitMHz: 1500, cpuReservationMHz: 0,
                                memoryLimitMiB: 512, memoryReservationMiB: 128, vms: 1)
        let v1 = PoolCgroupValues.v1(s, coreMHz: 3000)
        #expect(v1["cpu"]!.map(\.1) == ["8000", "50000"])
        #expect(v1["memory"]!.map(\.1) == ["536870912", "134217728"])
        var open = s
        open.cpuLimitMHz = nil
        open.memoryLimitMiB = nil
        #expect(PoolCgroupValues.v1(open, coreMHz: 3000)["cpu"]!.map(\.1) == ["8000", "-1"])
        #expect(PoolCgroupValues.v2(open, coreMHz: 3000).map(\.1) == ["306", "max 100000", "max", "134217728"])
        #expect(PoolCgroupValues.v2(s, coreMHz: 3000)[1].1 == "50000 100000")
        #expect(PoolCgroupValues.quotaMicros(limitMHz: 1, coreMHz: 3000) == 1000)
        // Extreme figures saturate instead of trapping (the agent refuses them before they get here).
        #expect(PoolCgroupValues.quotaMicros(limitMHz: .max, coreMHz: 0) == 1 << 50)
        #expect(PoolCgroupValues.bytes(mib: .max) == 1 << 62 && PoolCgroupValues.bytes(mib: -5) == 0 && PoolCgroupValues.bytes(mib: 2) == 2 << 20)
        for shares in [2, 1024, 4000, 262_144] {
            let back = PoolCgroupValues.shares(weight: PoolCgroupValues.weight(shares: shares))
            #expect(abs(back - shares) <= 27)
        }
    }

    @Test func vmLimitAboveItsPoolIsRefused() throws {
        let json = #"""
            {"apiVersion":"vsphere/v1","kind":"Cluster","resourcePools":[{"name":"gold","cpu":{"limitMHz":1000}},{"name":"silver","parent":"gold"}],
             "vms":[{"name":"a","cpus":1,"memoryMiB":64,"resourcePool":"silver","resources":{"cpu":{"limitMHz":1500}}},
                    {"name":"b","cpus":1,"memoryMiB":64,"resourcePool":"silver","resources":{"cpu":{"limitMHz":900}}}]}
            """#
        do {
            _ = try ClusterManifest.decodeValidated(Data(json.utf8))
            Issue.record("accepted")
        } catch {
            #expect(error.problems.map(\.description) == ["vms[0].resources.cpu.limitMHz: 1500 MHz is above the CPU limit of resource pool gold (1000 MHz), which caps it anyway"])
        }
    }
}

@Suite struct ComplianceRulesTests {
    @Test func rulesFindWhatBreaksThem() {
        let m = ClusterManifest(
            settings: .init(compliance: .init(requireResourcePool: true, requireMemoryLimit: true, requireCPULimit: true, maxVCPUs: 2, allowedNetworks: ["prod"], requireSite: true)),
            resourcePools: [.init(name: "capped", cpu: .init(limitMHz: 4000), memory: .init(limitMiB: 4096)), .init(name: "kid", parent: "capped")],
            vms: [
                VMSpec(name: "ok", cpus: 2, memoryMiB: 256, nics: [.init(network: "prod")], resourcePool: "kid", placement: .init(site: "dc1")),
                VMSpec(name: "bad", cpus: 4, memoryMiB: 256, nics: [.init(network: "dmz")]),
            ])
        let r = Compliance.evaluate(m)
        #expect(r.rules.count == 6 && r.vms == 2)
        #expect(!r.violations.contains { $0.vm == "ok" }, "limits inherited from an ancestor pool count")
        #expect(Set(r.violations.filter { $0.vm == "bad" }.map(\.rule)) == ["requireResourcePool", "requireMemoryLimit", "requireCPULimit", "maxVCPUs", "allowedNetworks", "requireSite"])
        #expect(!r.compliant)
        #expect(Compliance.evaluate(ClusterManifest(vms: m.vms)).compliant, "no rules, nothing to break")
    }
}

/// Inputs the API fuzzer found crashing the daemons: they are bad input now, with their field's path.
@Suite struct FuzzFindings {
    @Test func hugeTopologyIsRefusedNotOverflowed() {
        let json = #"{"name":"t","cpus":333,"memoryMiB":512,"topology":{"threads":180013,"sockets":110453569914833,"cores":2283}}"#
        do {
            _ = try VMSpec.decodeValidated(Data(json.utf8))
            Issue.record("accepted")
        } catch {
            #expect(error.problems.map(\.path).contains("topology"))
        }
    }

    /// Non-ASCII digits in an address trapped a force unwrap (found in review).
    @Test func nonASCIIDigitsInAnAddressAreRefused() {
        let json = #"{"name":"t","cpus":1,"memoryMiB":512,"graphics":{"type":"vnc","listen":"١.١.١.١"}}"#
        do {
            _ = try VMSpec.decodeValidated(Data(json.utf8))
            Issue.record("accepted")
        } catch {
            #expect(error.problems.map(\.path) == ["graphics.listen"])
        }
    }

    @Test func hugeLimitsAreRefused() {
        let json = #"{"name":"t","cpus":1,"memoryMiB":512,"resources":{"cpu":{"limitMHz":9223372036854775807},"memory":{"limitMiB":9223372036854775807}}}"#
        do {
            _ = try VMSpec.decodeValidated(Data(json.utf8))
            Issue.record("accepted")
        } catch {
            #expect(Set(error.problems.map(\.path)).isSuperset(of: ["resources.cpu.limitMHz", "resources.memory.limitMiB"]))
        }
    }
}
