import AgentAPI
import ClusterModel
import ControllerAPI
import Foundation
import Testing

/// DRS and DPM on a 3-host testbed whose guests run on CPU 0 only (GUEST_CPUS=0: each host offers one
/// guest CPU, so two busy TCG guests fill a host), through the real CLI: idle VMs spread over three
/// hosts → `drs apply` packs them onto one and the testbed power driver switches the two emptied hosts
/// off → busy guests arrive and DPM wakes a host, whose agent reports back, and DRS moves a busy guest
/// onto it → maintenance mode empties that host again.
@Suite(.serialized, .enabled(if: Testbed.available && Testbed.hostCount == 3 && Testbed.sites == 1 && !Testbed.ctlBinary.isEmpty,
                             "needs the 3-host testbed (make test brings it up with GUEST_CPUS=0)"))
struct DRSOnTestbed {
    let t = VMotionHelpers()

    func manifest(dpm: String, powerOffSustain: Int, vms: [(String, String)]) throws -> String {
        let g = Testbed.guestDir
        let items = vms.map { name, extra in
            #"{"name":"\#(name)","cpus":1,"memoryMiB":128,"boot":{"kernel":"\#(g)/vmlinuz","initrd":"\#(g)/initrd.img","cmdline":"console=ttyS0 vs.name=\#(name) \#(extra)"},"nics":[{"network":"lan"}]}"#
        }.joined(separator: ",")
        let doc = #"""
            {"apiVersion":"vsphere/v1","kind":"Cluster",
             "settings":{"placement":{"cpuOvercommit":8},"migration":{"transport":"tcp","sharedStorageUnverifiable":true},
               "drs":{"automation":"manual","demandWindowSeconds":4},
               "dpm":{"automation":"\#(dpm)","targetUtilization":50,"tolerance":30,"powerOnSustainSeconds":6,
                      "powerOffSustainSeconds":\#(powerOffSustain),"powerOnTimeoutSeconds":120}},
             "vms":[\#(items)]}
            """#
        let path = "\(Testbed.dir)/drs-\(vms.count).json"
        try doc.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func json<T: Decodable>(_ type: T.Type, _ args: String...) throws -> T {
        let (rc, out) = try t.ctl(args + ["-o", "json"])
        guard rc == 0 else { throw TestFailure("vsphere-ctl \(args.joined(separator: " ")): exit \(rc): \(out)") }
        return try JSONDecoder().decode(T.self, from: Data(out.utf8))
    }

    func hosts() throws -> [HostView] { try json([HostView].self, "get", "hosts") }
    func vms() throws -> [VMView] { try json([VMView].self, "get", "vms") }

    @Test func consolidateWakeAndEvacuate() throws {
        let idle = [("dr1", ""), ("dr2", ""), ("dr3", "")]
        defer {
            // DPM back off, then every VM gone and every host on.
            if let path = try? manifest(dpm: "off", powerOffSustain: 3600, vms: []) { _ = try? t.ctl("apply", "-f", path) }
            for n in ["dr1", "dr2", "dr3", "db1", "db2"] { _ = try? t.ctl("delete", "vm", n) }
            for h in ["h1", "h2", "h3"] { _ = try? Testbed.run(["bash", Testbed.script, "power", h, "on"]) }
        }
        // 1. Three idle VMs, spread one per host.
        var (rc, out) = try t.ctl("apply", "-f", try manifest(dpm: "manual", powerOffSustain: 8, vms: idle), "--wait", "--timeout", "180")
        #expect(rc == 0, "\(out)")
        let spread = try eventuallySync(timeout: 120) { () -> [VMView]? in
            let v = try vms().filter { $0.name.hasPrefix("dr") }
            return v.count == 3 && v.allSatisfy { $0.state == "running" } ? v : nil
        }
        #expect(Set(spread.compactMap(\.host)).count == 3, "spread: \(spread.map { "\($0.name)@\($0.host ?? "-")" })")

        // 2. Once every host has stayed below 20 % for the window, the plan packs and powers two hosts off.
        let plan = try eventuallySync(timeout: 180) { () -> DRSPlanView? in
            let p = try json(DRSPlanView.self, "drs", "plan")
            return p.kind == "consolidate" && p.power.hostsToPowerOff.count == 2 ? p : nil
        }
        #expect(plan.moves.count == 2, "\(plan.moves)")
        #expect(plan.moves.allSatisfy { $0.reason.hasPrefix("empties") && $0.predictedMs != nil })
        #expect(plan.kept.contains { $0.vm == nil && $0.host == nil && $0.reason.contains("DPM packs") })

        // 3. drs apply carries it out: the VMs move live, the emptied hosts go off (testbed driver).
        (rc, out) = try t.ctl("drs", "apply", "--wait", "--timeout", "300")
        #expect(rc == 0, "\(out)")
        var hs = try hosts()
        let off = hs.filter { $0.state == "poweredOff" }.map(\.name).sorted()
        #expect(off == plan.power.hostsToPowerOff.sorted(), "\(hs)")
        #expect(hs.filter { $0.state == "poweredOff" }.allSatisfy { $0.power == "standby" && $0.vms == 0 })
        let on = try #require(hs.first { $0.state == "connected" }?.name)
        #expect(try vms().filter { $0.name.hasPrefix("dr") }.allSatisfy { $0.host == on && $0.state == "running" })
        for h in off {
            let (_, power) = try Testbed.run(["bash", Testbed.script, "power", h, "status"])
            #expect(power.trimmingCharacters(in: .whitespacesAndNewlines) == "off", "\(h)'s libvirtd and agent are stopped")
            #expect(try t.domains(on, running: true).count == 3)
        }

        // 4. Load rises: two guests that keep their CPU busy. With DPM automated, the host above 80 % for
        //    6 s gets company: a standby host is woken, counts once its agent reports, and DRS moves a
        //    busy guest there.
        let busy = idle + [("db1", "vs.dirty=8"), ("db2", "vs.dirty=8")]
        (rc, out) = try t.ctl("apply", "-f", try manifest(dpm: "automated", powerOffSustain: 3600, vms: busy))
        #expect(rc == 0, "\(out)")
        let woken = try eventuallySync(timeout: 300) { () -> HostView? in
            try hosts().first { $0.name != on && $0.state == "connected" && $0.vms > 0 }
        }
        #expect(woken.power == "on")
        let (_, events) = try t.ctl("events", "-o", "json")
        let log = try JSONDecoder().decode([EventView].self, from: Data(events.utf8))
        #expect(log.contains { $0.name == woken.name && $0.event == "powered-on" }, "the wake-up counted when the agent reported")
        #expect(log.contains { $0.event == "powered-off" })
        let moved = try vms().filter { $0.host == woken.name }.map(\.name)
        #expect(moved.contains { $0.hasPrefix("db") }, "a busy guest went to the woken host: \(moved)")

        // 5. Maintenance mode empties the woken host again; the VMs keep running elsewhere. DPM goes back to
        //    advising first: with every VM back on one host it would otherwise wake the third host and move
        //    a guest while this step looks.
        (rc, out) = try t.ctl("apply", "-f", try manifest(dpm: "manual", powerOffSustain: 3600, vms: busy))
        #expect(rc == 0, "\(out)")
        _ = try eventuallySync(timeout: 120) { try json([JobView].self, "get", "jobs").allSatisfy(\.isFinished) ? true : nil }
        (rc, out) = try t.ctl("host", "maintenance", woken.name, "on", "--wait", "--timeout", "300")
        #expect(rc == 0, "\(out)")
        hs = try hosts()
        let m = try #require(hs.first { $0.name == woken.name })
        #expect(m.state == "maintenance" && m.vms == 0, "\(m)")
        #expect(try vms().filter { ["dr", "db"].contains(String($0.name.prefix(2))) }.allSatisfy { $0.host != woken.name && $0.state == "running" })
        #expect(try t.domains(woken.name).isEmpty)
        (rc, out) = try t.ctl("host", "maintenance", woken.name, "off")
        #expect(rc == 0, "\(out)")
        #expect(try hosts().first { $0.name == woken.name }?.state == "connected")
    }

    /// Core parking on h3 by a second agent whose guests may use CPUs 0-1: an idle guest is pinned onto
    /// CPU 0 (CPU 1 parked); a busy one brings CPU 1 back at once; once it is gone, CPU 1 is parked again
    /// after the hysteresis. The pinning is read back from libvirt.
    @Test func coreParking() async throws {
        _ = try Testbed.run(["bash", Testbed.script, "power", "h3", "on"])
        let addr = try Testbed.address("h3")
        let dataDir = "\(Testbed.dir)/h3/agent-parking"
        let config = "\(Testbed.dir)/h3/parking.json"
        try #"{"listen":"\#(addr)","port":7445,"accelerator":"tcg","hostName":"h3","dataDir":"\#(dataDir)","tlsCertificate":"\#(Testbed.dir)/h3/agent/tls/agent.crt","tlsKey":"\#(Testbed.dir)/h3/agent/tls/agent.key","clientCA":"\#(Testbed.clusterCA)","guestCPUs":"0-1","coreParking":true,"coreParkingIntervalSeconds":1,"coreParkingTargetUtilization":0.5}"#
            .write(toFile: config, atomically: true, encoding: .utf8)
        let pid = try Testbed.spawn(["bash", Testbed.script, "exec", "h3", Testbed.agentBinary, "--config", config], log: "\(Testbed.dir)/h3/agent-parking.log")
        defer { kill(pid, SIGTERM); var s: Int32 = 0; waitpid(pid, &s, 0) }
        let agent = try await eventually("parking agent up", timeout: .seconds(60)) { () -> AgentClient? in
            let c = try Testbed.agent("h3", port: 7445)
            return (try? await c.get("/healthz"))?.status == 200 ? c : nil
        }
        let spec = { (name: String, extra: String) in
            VMSpec(name: name, cpus: 1, memoryMiB: 128,
                   boot: .init(kernel: "\(Testbed.guestDir)/vmlinuz", initrd: "\(Testbed.guestDir)/initrd.img", cmdline: "console=ttyS0 vs.name=\(name) \(extra)"))
        }
        defer {
            for n in ["pk1", "pk2"] { _ = try? Testbed.run(["bash", Testbed.script, "exec", "h3", "sh", "-c", "virsh -c qemu:///system destroy \(n); virsh -c qemu:///system undefine \(n)"]) }
        }
        func pinning(_ name: String) throws -> String {
            let (_, out) = try Testbed.run(["bash", Testbed.script, "exec", "h3", "virsh", "-c", "qemu:///system", "vcpupin", name])
            // " VCPU   CPU Affinity" / "-----" / " 0      0-1"
            return out.split(separator: "\n").compactMap { line -> String? in
                let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                return parts.count == 2 && parts[0] == "0" ? String(parts[1]) : nil
            }.first ?? ""
        }
        func parked() async throws -> [Int]? { try await agent.get("/v1/host").decode(HostInventory.self).parkedCPUs }

        #expect(try await agent.put("/v1/vms/pk1", spec("pk1", "")).status == 201)
        #expect(try await agent.post("/v1/vms/pk1/start").status == 200)
        _ = try await eventually("CPU 1 parked", timeout: .seconds(90)) { () -> Bool? in
            try await parked() == [1] && (try pinning("pk1")) == "0" ? true : nil
        }
        // Load: a guest that keeps a CPU busy. Both guests get both CPUs back at once.
        #expect(try await agent.put("/v1/vms/pk2", spec("pk2", "vs.dirty=8")).status == 201)
        #expect(try await agent.post("/v1/vms/pk2/start").status == 200)
        _ = try await eventually("CPU 1 back", timeout: .seconds(90)) { () -> Bool? in
            try await parked() == [] && (try pinning("pk1")) == "0-1" && (try pinning("pk2")) == "0-1" ? true : nil
        }
        // The busy guest goes: parked again, after the hysteresis.
        #expect(try await agent.request(.DELETE, "/v1/vms/pk2?force=true").status == 200)
        _ = try await eventually("CPU 1 parked again", timeout: .seconds(90)) { () -> Bool? in
            try await parked() == [1] && (try pinning("pk1")) == "0" ? true : nil
        }
        #expect(try await agent.request(.DELETE, "/v1/vms/pk1?force=true").status == 200)
    }
}
