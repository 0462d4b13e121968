import AgentAPI
import ClusterModel
import ControllerAPI
import Foundation
import Testing

extension ClusterOnTestbed {
/// Resource pools in force on the hosts: the controller divides each pool's limit, reservation and
/// shares among the hosts its VMs run on; each agent keeps a cgroup partition per pool, libvirt puts the
/// pool's domains in it, and the kernel's files say what is enforced.
@Suite(.serialized, .enabled(if: Testbed.available && Testbed.sites == 1 && !Testbed.ctlBinary.isEmpty, "needs the one-site testbed"))
struct ResourcePoolsOnTestbed {
    let t = VMotionHelpers()

    /// gold (high shares, CPU limit `goldCPU`, memory 600 MiB with 64 reserved) ⊃ silver (CPU limit 1000);
    /// rpa (silver) on h1, rpb (gold, its own CPU limit 400) on `rpbHosts`.
    func apply(goldCPU: Int, rpbHosts: [String]) throws {
        let g = Testbed.guestDir
        func vm(_ name: String, pool: String, hosts: [String], extra: String = "") -> String {
            #"{"name":"\#(name)","cpus":1,"memoryMiB":128,"resourcePool":"\#(pool)"\#(extra),"boot":{"kernel":"\#(g)/vmlinuz","initrd":"\#(g)/initrd.img","cmdline":"console=ttyS0 vs.name=\#(name)"},"nics":[{"network":"lan"}],"placement":{"hosts":[\#(hosts.map { "\"\($0)\"" }.joined(separator: ","))]}}"#
        }
        let doc = #"""
            {"apiVersion":"vsphere/v1","kind":"Cluster","resourcePools":[
              {"name":"gold","cpu":{"shares":"high","limitMHz":\#(goldCPU)},"memory":{"reservationMiB":64,"limitMiB":600}},
              {"name":"silver","parent":"gold","cpu":{"limitMHz":1000}}],
             "vms":[\#(vm("rpa", pool: "silver", hosts: ["h1"])),\#(vm("rpb", pool: "gold", hosts: rpbHosts, extra: #","resources":{"cpu":{"limitMHz":400}}"#))]}
            """#
        let path = "\(Testbed.dir)/resource-pools.json"
        try doc.write(toFile: path, atomically: true, encoding: .utf8)
        let (rc, out) = try t.ctl("apply", "-f", path, "--wait", "--timeout", "180")
        #expect(rc == 0, "\(out)")
    }

    func pools() throws -> [ResourcePoolView] {
        let (rc, out) = try t.ctl("get", "resource-pools", "-o", "json")
        #expect(rc == 0, "\(out)")
        return try JSONDecoder().decode([ResourcePoolView].self, from: Data(out.utf8))
    }

    /// Waits until every host reports `pool` applied as `check` wants it, without errors.
    func waitFor(_ what: String, _ pool: String, _ check: @escaping ([String: ResourcePoolView.HostShare]) -> Bool) throws -> [String: ResourcePoolView.HostShare] {
        try eventuallySync(timeout: 60) { () -> [String: ResourcePoolView.HostShare]? in
            guard let p = try pools().first(where: { $0.name == pool }) else { return nil }
            let hosts = Dictionary(uniqueKeysWithValues: p.hosts.map { ($0.host, $0) })
            guard hosts.count == 2, hosts.values.allSatisfy({ $0.error == nil && $0.applied != nil && $0.applied!.errors.isEmpty }) else { return nil }
            return check(hosts) ? hosts : nil
        }
    }

    /// A cgroup file as the host's kernel has it.
    func cgroup(_ host: String, _ file: String) throws -> String {
        let (rc, out) = try Testbed.run(["bash", Testbed.script, "exec", host, "cat", "/sys/fs/cgroup/\(file)"])
        #expect(rc == 0, "\(host): \(file): \(out)")
        return out.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func qemuCgroup(_ host: String, _ vm: String) throws -> String {
        let (_, out) = try Testbed.run(["bash", Testbed.script, "exec", host, "sh", "-c", "cat /proc/$(cat /run/libvirt/qemu/\(vm).pid)/cgroup"])
        return out.split(separator: "\n").first { $0.contains(":cpu:") }.map(String.init) ?? out
    }

    @Test func poolsAreEnforcedOnHosts() async throws {
        defer {
            _ = try? t.ctl("delete", "vm", "rpa")
            _ = try? t.ctl("delete", "vm", "rpb")
            _ = try? eventuallySync(timeout: 60) { try (t.domains("h1") + t.domains("h2")).contains { $0 == "rpa" || $0 == "rpb" } ? nil : true }
            _ = try? t.ctl("delete", "resource-pool", "silver")
            _ = try? t.ctl("delete", "resource-pool", "gold")
        }
        let mhz = try await (Testbed.agent("h1").get("/v1/host").decode(HostInventory.self)).cpu.mhz
        func quota(_ limit: Int) -> String { String(PoolCgroupValues.quotaMicros(limitMHz: limit, coreMHz: mhz)) }

        try apply(goldCPU: 1500, rpbHosts: ["h2"])
        // One VM of gold per host: its 1500 MHz split evenly, its 600 MiB likewise (above each guest's
        // footprint), its 64 MiB reservation too.
        var gold = try waitFor("gold on both hosts", "gold") { $0["h1"]?.setting.vms == 1 && $0["h2"]?.setting.vms == 1 }
        for h in ["h1", "h2"] {
            #expect(gold[h]!.setting.cpuLimitMHz == 750)
            #expect(gold[h]!.setting.memoryLimitMiB == 300)
            #expect(gold[h]!.setting.memoryReservationMiB == 32)
            #expect(gold[h]!.setting.cpuShares == 8000)
            #expect(gold[h]!.applied?.partition == "/machine/gold")
            // The kernel's own files, read on the host.
            #expect(try cgroup(h, "cpu/machine/gold.partition/cpu.cfs_quota_us") == quota(750))
            #expect(try cgroup(h, "cpu/machine/gold.partition/cpu.cfs_period_us") == "100000")
            #expect(try cgroup(h, "cpu/machine/gold.partition/cpu.shares") == "8000")
            #expect(try cgroup(h, "memory/machine/gold.partition/memory.limit_in_bytes") == String(300 << 20))
            #expect(try cgroup(h, "memory/machine/gold.partition/memory.soft_limit_in_bytes") == String(32 << 20))
        }
        // silver lives inside gold: capped by gold's share on h1.
        var silver = try waitFor("silver", "silver") { $0["h1"]?.setting.vms == 1 }
        #expect(silver["h1"]!.setting.cpuLimitMHz == 750)
        #expect(try cgroup("h1", "cpu/machine/gold.partition/silver.partition/cpu.cfs_quota_us") == quota(750))
        // libvirt ran each guest inside its pool's partition.
        #expect(try qemuCgroup("h1", "rpa").contains(":cpu:/machine/gold.partition/silver.partition/qemu-"))
        #expect(try qemuCgroup("h2", "rpb").contains(":cpu:/machine/gold.partition/qemu-"))
        #expect(gold["h1"]!.applied?.domains == [] && silver["h1"]!.applied?.domains == ["rpa"] && gold["h2"]!.applied?.domains == ["rpb"])

        // Lowering gold below silver's current quota: silver goes down first (cgroup v1 refuses a child
        // quota above its parent's). On h2, rpb's own 400 MHz limit is a floor.
        try apply(goldCPU: 500, rpbHosts: ["h2"])
        gold = try waitFor("gold lowered", "gold") { $0["h1"]?.setting.cpuLimitMHz == 250 }
        #expect(gold["h2"]!.setting.cpuLimitMHz == 400)
        #expect(try cgroup("h1", "cpu/machine/gold.partition/cpu.cfs_quota_us") == quota(250))
        #expect(try cgroup("h1", "cpu/machine/gold.partition/silver.partition/cpu.cfs_quota_us") == quota(250))
        #expect(try cgroup("h2", "cpu/machine/gold.partition/cpu.cfs_quota_us") == quota(400))

        // Raising: gold first, then silver up to its own 1000.
        try apply(goldCPU: 3000, rpbHosts: ["h1", "h2"])
        silver = try waitFor("silver raised", "silver") { $0["h1"]?.setting.cpuLimitMHz == 1000 }
        #expect(try cgroup("h1", "cpu/machine/gold.partition/cpu.cfs_quota_us") == quota(1500))
        #expect(try cgroup("h1", "cpu/machine/gold.partition/silver.partition/cpu.cfs_quota_us") == quota(1000))

        // A migration lands in the pool's partition on the destination, and the pool's share follows.
        let (rc, m) = try t.migrate("rpb", to: "h1")
        #expect(rc == 0, "\(String(describing: m))")
        gold = try waitFor("gold all on h1", "gold") { $0["h1"]?.setting.vms == 2 && $0["h2"]?.setting.vms == 0 }
        #expect(gold["h1"]!.setting.cpuLimitMHz == 3000 && gold["h1"]!.setting.memoryLimitMiB == 600)
        #expect(try cgroup("h1", "cpu/machine/gold.partition/cpu.cfs_quota_us") == quota(3000))
        #expect(try qemuCgroup("h1", "rpb").contains(":cpu:/machine/gold.partition/qemu-"))
        #expect(gold["h1"]!.applied?.domains == ["rpb"])

        // A pool is deleted only once nothing names it; its partitions go from every host.
        let (refused, why) = try t.ctl("delete", "resource-pool", "gold")
        #expect(refused == 1 && why.contains("silver"), "\(why)")
        _ = try t.ctl("delete", "vm", "rpa")
        _ = try t.ctl("delete", "vm", "rpb")
        _ = try eventuallySync(timeout: 60) { try (t.domains("h1") + t.domains("h2")).contains { $0 == "rpa" || $0 == "rpb" } ? nil : true }
        #expect(try t.ctl("delete", "resource-pool", "silver").0 == 0)
        #expect(try t.ctl("delete", "resource-pool", "gold").0 == 0)
        let gone = try eventuallySync(timeout: 60) { () -> Bool? in
            for h in ["h1", "h2"] {
                if try Testbed.run(["bash", Testbed.script, "exec", h, "test", "-d", "/sys/fs/cgroup/cpu/machine/gold.partition"]).0 == 0 { return nil }
            }
            return true
        }
        #expect(gone)
    }
}
}
