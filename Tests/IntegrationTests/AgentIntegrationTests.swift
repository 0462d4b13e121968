import AgentAPI
import ClusterModel
import ControllerAPI
import Foundation
import Testing

extension ClusterOnTestbed {
/// The real tier: agents on a 2-host testbed, each driving its own libvirtd, with TCG guests. Serialized
/// with the cluster suites: some of those restart an agent (certificate rotation, joining), which would
/// answer these tests' calls with 503 meanwhile.
@Suite(.serialized, .enabled(if: Testbed.available, "needs the testbed (make test brings it up)"))
struct AgentOnTestbed {
    func guestSpec(_ name: String, ip: String, resources: ServiceLevels? = nil) -> VMSpec {
        VMSpec(
            name: name, cpus: 1, memoryMiB: 256,
            boot: .init(
                kernel: Testbed.guestDir + "/vmlinuz", initrd: Testbed.guestDir + "/initrd.img",
                cmdline: "console=ttyS0 vs.ip=\(ip)/24 vs.name=\(name)"),
            nics: [.init(bridge: "br0")], resources: resources)
    }

    @Test func inventoryFromEveryHost() async throws {
        for host in ["h1", "h2"] {
            let inv: HostInventory = try await Testbed.agent(host).get("/v1/host").decode()
            #expect(inv.hostname == host)
            #expect(inv.accelerator == "tcg")
            #expect(inv.cpu.cpus >= 1)
            #expect(inv.cpu.mhz > 0)
            #expect(inv.memory.totalMiB > 0)
            #expect(!inv.numa.isEmpty)
            #expect(inv.libvirtVersion.split(separator: ".").count == 3)
            #expect(inv.qemuVersion.split(separator: ".").count == 3)
            #expect(inv.capacity.unreservedMemoryMiB <= inv.memory.totalMiB)
            #expect(inv.connected)
        }
    }

    /// Define, start, boot marker, ping, service levels in libvirt and in the kernel's cgroups,
    /// events, ACPI shutdown, undefine.
    @Test func guestLifecycleWithServiceLevels() async throws {
        let agent = try Testbed.agent("h1")
        let inv: HostInventory = try await agent.get("/v1/host").decode()
        let limitMHz = inv.cpu.mhz * 8 / 10
        let spec = guestSpec(
            "life1", ip: "10.250.1.111",
            resources: .init(
                cpu: .init(reservationMHz: 100, shares: .high, limitMHz: limitMHz),
                memory: .init(reservationMiB: 128, limitMiB: 224)))
        let events = agent.follow()
        defer { events.stop() }
        _ = try? await agent.request(.DELETE, "/v1/vms/life1?force=true")

        let created = try await agent.put("/v1/vms/life1", spec)
        #expect(created.status == 201, "\(created.text)")
        let again = try await agent.put("/v1/vms/life1", spec)
        #expect(again.status == 200, "redefining the same spec is an update")
        let status: VMStatus = try again.decode()
        #expect(status.state == "shutoff")
        #expect(status.spec?.resources == spec.resources)

        let started = try await agent.post("/v1/vms/life1/start")
        #expect(started.status == 200, "\(started.text)")
        _ = try await events.waitFor("started") { $0.domain == "life1" && $0.event == "started" }

        let console = try await eventually("boot marker") { () -> String? in
            let text = try await agent.get("/v1/vms/life1/console").text
            return text.contains("VSPHERE-GUEST-READY name=life1") ? text : nil
        }
        #expect(console.contains("ip=10.250.1.111/24"))
        _ = try await eventually("ping 10.250.1.111", timeout: .seconds(30)) { try Testbed.ping("10.250.1.111") ? true : nil }

        // Service levels as libvirt reports them...
        let tuning: VMTuning = try await agent.get("/v1/vms/life1/tuning").decode()
        let quota = Int64((Double(limitMHz) / Double(inv.cpu.mhz) * 100_000).rounded())
        #expect(tuning.scheduler["cpu_shares"]?.int == 2000)
        #expect(tuning.scheduler["global_period"]?.int == 100_000)
        #expect(tuning.scheduler["global_quota"]?.int == quota)
        #expect(tuning.memory["hard_limit"]?.int == Int64(224 * 1024))
        #expect(tuning.memory["soft_limit"]?.int == Int64(128 * 1024))
        // ...and as the kernel enforces them.
        let cpuPath = try #require(tuning.cgroups["cpu"])
        let memPath = try #require(tuning.cgroups["memory"])
        func cgroup(_ controller: String, _ path: String, _ file: String) throws -> String {
            try String(contentsOfFile: "/sys/fs/cgroup/\(controller)\(path)/\(file)", encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
        }
        #expect(try cgroup("cpu", cpuPath, "cpu.shares") == "2000")
        #expect(try cgroup("cpu", cpuPath, "cpu.cfs_period_us") == "100000")
        #expect(try cgroup("cpu", cpuPath, "cpu.cfs_quota_us") == String(quota))
        #expect(try cgroup("memory", memPath, "memory.limit_in_bytes") == String(224 * 1024 * 1024))
        #expect(try cgroup("memory", memPath, "memory.soft_limit_in_bytes") == String(128 * 1024 * 1024))

        let stats: VMStats = try await agent.get("/v1/vms/life1/stats").decode()
        #expect(stats.state == "running")
        #expect(stats.cpuTimeNs > 0)
        #expect(stats.raw["vcpu.current"]?.int == 1)

        let inv2: HostInventory = try await agent.get("/v1/host").decode()
        #expect(inv2.capacity.reservedMemoryMiB >= 128)
        #expect(inv2.capacity.runningVMs >= 1)

        // Starting twice is a state conflict; undefining a running VM needs force.
        #expect(try await agent.post("/v1/vms/life1/start").status == 409)
        #expect(try await agent.delete("/v1/vms/life1").status == 409)

        let down = try await agent.post("/v1/vms/life1/shutdown?timeoutSeconds=60")
        let result: ActionResult = try down.decode()
        #expect(result.state == "shutoff")
        #expect(result.how == "acpi", "the guest powers off on the ACPI power button")
        _ = try await events.waitFor("stopped") { $0.domain == "life1" && $0.event == "stopped" }

        #expect(try await agent.delete("/v1/vms/life1").status == 200)
        #expect(try await agent.get("/v1/vms/life1").status == 404)
        _ = try await events.waitFor("undefined") { $0.domain == "life1" && $0.event == "undefined" }
    }

    @Test func suspendResumeRebootDestroy() async throws {
        let agent = try Testbed.agent("h2")
        _ = try? await agent.request(.DELETE, "/v1/vms/ops1?force=true")
        #expect(try await agent.put("/v1/vms/ops1", guestSpec("ops1", ip: "10.250.1.112")).status == 201)
        #expect(try await agent.post("/v1/vms/ops1/start").status == 200)
        let s1: ActionResult = try await agent.post("/v1/vms/ops1/suspend").decode()
        #expect(s1.state == "paused")
        let s2: ActionResult = try await agent.post("/v1/vms/ops1/resume").decode()
        #expect(s2.state == "running")
        #expect(try await agent.post("/v1/vms/ops1/reboot").status == 200)
        let s3: ActionResult = try await agent.post("/v1/vms/ops1/destroy").decode()
        #expect(s3.state == "shutoff")
        #expect(try await agent.post("/v1/vms/ops1/destroy").status == 409, "destroying a stopped VM is a state conflict")
        #expect(try await agent.delete("/v1/vms/ops1").status == 200)
    }

    @Test func malformedRequestsNameTheField() async throws {
        let agent = try Testbed.agent("h1")
        let bad = try await agent.request(.PUT, "/v1/vms/bad1", body: Data(#"{"name":"bad1","cpus":"two","memoryMiB":8,"color":"red"}"#.utf8))
        #expect(bad.status == 400)
        let body: ErrorBody = try bad.decode()
        #expect(body.error.problems?.map(\.path) == ["color", "cpus"])
        let bounds = try await agent.put("/v1/vms/bad1", VMSpec(name: "bad1", cpus: 1, memoryMiB: 8))
        #expect(bounds.status == 400)
        #expect(try bounds.decode(ErrorBody.self).error.problems?.first?.description == "memoryMiB: must be at least 16")
        #expect(try await agent.put("/v1/vms/other", VMSpec(name: "bad1", cpus: 1, memoryMiB: 64)).status == 400)
        #expect(try await agent.put("/v1/vms/bad1", VMSpec(name: "bad1", cpus: 1, memoryMiB: 64, disks: [.init(pool: "local")])).status == 400)
        #expect(try await agent.request(.PUT, "/v1/vms/bad1", body: Data("{".utf8)).status == 400)
        #expect(try await agent.get("/v1/vms/Bad_Name").status == 400)
        #expect(try await agent.get("/v1/vms/no-such-vm").status == 404)
        #expect(try await agent.post("/v1/vms/no-such-vm/start").status == 404)
        #expect(try await agent.post("/v1/vms/no-such-vm/explode").status == 404)
        #expect(try await agent.post("/v1/vms/no-such-vm/shutdown?timeoutSeconds=-1").status == 400)
        #expect(try await agent.get("/v1/events?since=abc").status == 400)
        // Nothing was defined by any of it.
        let vms: [VMStatus] = try await agent.get("/v1/vms").decode()
        #expect(!vms.contains { $0.name == "bad1" || $0.name == "other" })
        // A hostile cmdline is stored as text, not markup.
        var evil = guestSpec("evil1", ip: "10.250.1.113")
        evil.boot?.cmdline = "console=ttyS0 </cmdline><devices><disk type='file'><source file='/etc/shadow'/></disk></devices>"
        #expect(try await agent.put("/v1/vms/evil1", evil).status == 201)
        let stored: VMStatus = try await agent.get("/v1/vms/evil1").decode()
        #expect(stored.spec?.boot?.cmdline == evil.boot?.cmdline)
        let (_, xml) = try Testbed.run(["bash", Testbed.script, "exec", "h1", "virsh", "-c", "qemu:///system", "dumpxml", "evil1"])
        #expect(!xml.contains("/etc/shadow'/>"))
        #expect(!xml.contains("<disk"))
        #expect(try await agent.delete("/v1/vms/evil1").status == 200)
    }
}
}

extension ClusterOnTestbed {
/// libvirtd restarts take a host's libvirt away for a moment: the controller sees the host without its
/// inventory meanwhile, so this runs one after the other with the suites that drive the cluster.
@Suite(.serialized, .enabled(if: Testbed.available, "needs the testbed (make test brings it up)"))
struct LibvirtdRestartOnTestbed {
    func guestSpec(_ name: String, ip: String) -> VMSpec { AgentOnTestbed().guestSpec(name, ip: ip) }

    /// libvirtd restarts under a running agent: the agent reports the loss, reconnects, and its event
    /// stream goes on with events from the new connection. A guest running across the restart survives.
    @Test func agentSurvivesLibvirtdRestart() async throws {
        let agent = try Testbed.agent("h2")
        _ = try? await agent.request(.DELETE, "/v1/vms/keep1?force=true")
        #expect(try await agent.put("/v1/vms/keep1", guestSpec("keep1", ip: "10.250.1.114")).status == 201)
        #expect(try await agent.post("/v1/vms/keep1/start").status == 200)
        let events = agent.follow()
        defer { events.stop() }
        try await Task.sleep(for: .milliseconds(500))

        let (rc, out) = try Testbed.run(["bash", Testbed.script, "restart-libvirtd", "h2"])
        #expect(rc == 0, "\(out)")
        _ = try await events.waitFor("libvirt-disconnected") { $0.kind == "agent" && $0.event == "libvirt-disconnected" }
        _ = try await events.waitFor("libvirt-connected") { $0.kind == "agent" && $0.event == "libvirt-connected" }

        let status: VMStatus = try await eventually("agent serving again") {
            let r = try await agent.get("/v1/vms/keep1")
            return r.status == 200 ? try r.decode(VMStatus.self) : nil
        }
        #expect(status.state == "running", "the guest outlives its libvirtd")
        #expect(try await agent.put("/v1/vms/after1", guestSpec("after1", ip: "10.250.1.115")).status == 201)
        _ = try await events.waitFor("defined after reconnect") { $0.domain == "after1" && $0.event == "defined" }
        #expect(try await agent.delete("/v1/vms/after1").status == 200)
        #expect(try await agent.request(.DELETE, "/v1/vms/keep1?force=true").status == 200)

        // A client that lost its stream catches up from the last id it saw.
        let last = events.events.withLock { $0.last?.seq ?? 0 }
        let replay = agent.follow(since: max(0, last - 2))
        defer { replay.stop() }
        let first = try await replay.waitFor("replayed") { _ in true }
        #expect(first.seq == max(1, last - 1))
    }
}
}

@Suite(.serialized, .enabled(if: Testbed.available && !Testbed.agentBinary.isEmpty, "needs the testbed and VSPHERE_AGENT_BIN"))
struct AgentProcess {
    /// systemd stops the agent with SIGTERM: open event streams end, the process exits 0, promptly.
    @Test func sigtermIsAGracefulStop() async throws {
        let addr = try Testbed.address("h1")
        let dataDir = "\(Testbed.dir)/h1/agent-sigterm"
        let pid = try Testbed.spawn([
            "bash", Testbed.script, "exec", "h1", Testbed.agentBinary, "--listen", addr, "--port", "7444",
            "--data-dir", dataDir, "--accelerator", "tcg", "--host-name", "h1",
            // h1's identity from the cluster CA: the same host, another port.
            "--tls-cert", "\(Testbed.dir)/h1/agent/tls/agent.crt", "--tls-key", "\(Testbed.dir)/h1/agent/tls/agent.key",
            "--client-ca", Testbed.clusterCA,
        ], log: "\(Testbed.dir)/h1/agent-sigterm.log")
        var reaped = false
        defer { if !reaped { kill(pid, SIGKILL); var s: Int32 = 0; waitpid(pid, &s, 0) } }
        let agent = try await eventually("second agent up", timeout: .seconds(60)) { () -> AgentClient? in
            let c = try Testbed.agent("h1", port: 7444)
            return (try? await c.get("/healthz"))?.status == 200 ? c : nil
        }
        // This agent watches the same libvirtd as h1's main agent: replay from its first event.
        let events = agent.follow(since: 0)
        defer { events.stop() }
        _ = try await events.waitFor("connected") { $0.event == "libvirt-connected" }

        // `bash testbed.sh exec` execs nsenter, which execs the agent: the pid is the agent's.
        let start = ContinuousClock.now
        #expect(kill(pid, SIGTERM) == 0)
        let status = try await eventually("agent exit", timeout: .seconds(20), every: .milliseconds(100)) { () -> Int32? in
            var s: Int32 = 0
            return waitpid(pid, &s, WNOHANG) == pid ? s : nil
        }
        reaped = true
        #expect(status & 0x7f == 0, "exited rather than killed by a signal")
        #expect((status >> 8) & 0xff == 0, "exit status 0")
        #expect(ContinuousClock.now - start < .seconds(10))
        _ = try await eventually("event stream closed by the server", timeout: .seconds(5), every: .milliseconds(100)) {
            events.ended.withLock { $0 } ? true : nil
        }
        let log = (try? String(contentsOfFile: "\(Testbed.dir)/h1/agent-sigterm.log", encoding: .utf8)) ?? ""
        #expect(log.contains("vsphere-agent stopped"))
    }
}

@Suite(.serialized, .enabled(if: Testbed.available, "needs the testbed (make test brings it up)"))
struct GuestImage {
    /// The qcow2 variant boots from its ext4 root disk (through a linked-clone overlay), and the guest
    /// dirties memory with non-zero data when asked: QEMU's own dirty-rate measurement sees it.
    @Test func diskVariantBootsAndDirtiesMemory() async throws {
        let agent = try Testbed.agent("h1")
        let overlay = "\(Testbed.dir)/h1/dirty1.qcow2"
        let (rc, out) = try Testbed.run([
            "qemu-img", "create", "-q", "-f", "qcow2", "-b", Testbed.guestDir + "/disk.qcow2", "-F", "qcow2", overlay,
        ])
        #expect(rc == 0, "\(out)")
        _ = try? await agent.request(.DELETE, "/v1/vms/dirty1?force=true")
        let spec = VMSpec(
            name: "dirty1", cpus: 1, memoryMiB: 256,
            boot: .init(
                kernel: Testbed.guestDir + "/vmlinuz", initrd: Testbed.guestDir + "/initrd.img",
                cmdline: "console=ttyS0 vs.root=/dev/vda vs.name=dirty1 vs.dirty=16:0"),
            disks: [.init(path: overlay, format: "qcow2")])
        #expect(try await agent.put("/v1/vms/dirty1", spec).status == 201)
        #expect(try await agent.post("/v1/vms/dirty1/start").status == 200)
        defer { Task { _ = try? await agent.request(.DELETE, "/v1/vms/dirty1?force=true") } }
        let console = try await eventually("boot marker") { () -> String? in
            let text = try await agent.get("/v1/vms/dirty1/console").text
            return text.contains("VSPHERE-GUEST-READY") ? text : nil
        }
        #expect(console.contains("root=disk"), "booted from the qcow2 root disk")

        // The guest reports every pass over its working set; two passes mean it keeps rewriting it.
        let passes = try await eventually("two dirtying passes", timeout: .seconds(180)) { () -> Int? in
            let text = try await agent.get("/v1/vms/dirty1/console").text
            // Serial lines end in \r\n, one Character in Swift: count the markers, not the lines.
            let n = text.components(separatedBy: "VSPHERE-GUEST-DIRTY passes=").count - 1
            return n >= 2 ? n : nil
        }
        #expect(passes >= 2)
        // QEMU's own estimate (page sampling) sees the guest dirtying: informative, recorded in the log.
        let virsh = ["bash", Testbed.script, "exec", "h1", "virsh", "-c", "qemu:///system"]
        let (crc, cout) = try Testbed.run(virsh + ["domdirtyrate-calc", "dirty1", "--seconds", "2"])
        #expect(crc == 0, "\(cout)")
        _ = try await eventually("dirty rate measured", timeout: .seconds(30)) { () -> Bool? in
            let (_, stats) = try Testbed.run(virsh + ["domstats", "dirty1", "--dirtyrate"])
            return stats.contains("dirtyrate.calc_status=2") ? true : nil
        }
        #expect(try await agent.request(.DELETE, "/v1/vms/dirty1?force=true").status == 200)
        try? FileManager.default.removeItem(atPath: overlay)
    }
}

extension ClusterOnTestbed.AgentOnTestbed {
    /// Bad pool settings are refused with the field's path and change nothing.
    @Test func badPoolSettingsAreRefused() async throws {
        let agent = try Testbed.agent("h1")
        let before = try await agent.get("/v1/resource-pools").text
        let bad = PoolSettingsRequest(pools: [
            HostPoolSetting(name: "Bad", parent: nil, path: ["Bad"], cpuShares: 1, cpuLimitMHz: 0, cpuReservationMHz: 0, memoryLimitMiB: nil, memoryReservationMiB: -1, vms: 0),
            HostPoolSetting(name: "kid", parent: "nope", path: ["nope", "kid"], cpuShares: 1024, cpuLimitMHz: nil, cpuReservationMHz: 0, memoryLimitMiB: nil, memoryReservationMiB: 0, vms: 0),
        ])
        let r = try await agent.put("/v1/resource-pools", bad)
        #expect(r.status == 400)
        let body = try JSONDecoder().decode(ErrorBody.self, from: r.body)
        let paths = Set((body.error.problems ?? []).map(\.path))
        #expect(paths.isSuperset(of: ["pools[0].name", "pools[0].cpuShares", "pools[0].cpuLimitMHz", "pools[0].memoryReservationMiB"]), "\(r.text)")
        // Figures that would overflow the kernel values (MHz → µs, MiB → bytes) are refused, not trapped on.
        let huge = PoolSettingsRequest(pools: [
            HostPoolSetting(name: "big", parent: nil, path: ["big"], cpuShares: 1024, cpuLimitMHz: .max, cpuReservationMHz: 0, memoryLimitMiB: .max, memoryReservationMiB: 0, vms: 0),
        ])
        let hugeReply = try await agent.put("/v1/resource-pools", huge)
        #expect(hugeReply.status == 400 && hugeReply.text.contains("pools[0].cpuLimitMHz") && hugeReply.text.contains("pools[0].memoryLimitMiB"), "\(hugeReply.text)")
        let wrongType = try await agent.request(.PUT, "/v1/resource-pools", body: Data(#"{"pools":[{"name":"x","path":"x"}]}"#.utf8))
        #expect(wrongType.status == 400)
        #expect(try await agent.get("/v1/resource-pools").text == before)
    }
}

extension ClusterOnTestbed.AgentOnTestbed {
    /// Mutual TLS only: the testbed's client certificate from the cluster CA is served; a client with no
    /// certificate, or with one from another CA, is refused in the handshake; plain HTTP gets no answer.
    @Test func onlyClientsOfTheClusterCAAreServed() async throws {
        let addr = try Testbed.address("h1")
        let base = "https://\(addr):7443"
        #expect(try await Testbed.agent("h1").get("/v1/host").status == 200)

        let anonymous = try AgentClient(base: base, clientCertificate: nil, clientKey: nil)
        await #expect(throws: (any Error).self, "no client certificate") { _ = try await anonymous.get("/v1/host") }

        let dir = "\(Testbed.dir)/intruder"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (rc, out) = try Testbed.run([
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", "/O=vsphere/CN=testbed-client", "-keyout", "\(dir)/client.key", "-out", "\(dir)/client.crt",
        ])
        #expect(rc == 0, "\(out)")
        let intruder = try AgentClient(base: base, clientCertificate: "\(dir)/client.crt", clientKey: "\(dir)/client.key")
        await #expect(throws: (any Error).self, "a certificate of another CA, even with the right name") { _ = try await intruder.get("/v1/host") }

        // The agent itself is known by the cluster CA only: a client trusting another CA refuses it.
        let misled = try AgentClient(base: base, ca: "\(dir)/client.crt")
        await #expect(throws: (any Error).self, "the agent's certificate chains to the cluster CA only") { _ = try await misled.get("/healthz") }

        let (_, code) = try Testbed.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "http://\(addr):7443/healthz"])
        #expect(code == "000", "plain HTTP is not answered (got \(code))")

        // Another host's identity, of the cluster CA (h2's agent and libvirt certificate), may not drive h1.
        let h2 = "\(Testbed.dir)/h2/agent/tls"
        let neighbour = try AgentClient(base: base, clientCertificate: "\(h2)/agent.crt", clientKey: "\(h2)/agent.key")
        await #expect(throws: (any Error).self, "a host's certificate is not a client of other agents") { _ = try await neighbour.get("/v1/host") }
        let log = try String(contentsOfFile: "\(Testbed.dir)/h1/agent.log", encoding: .utf8)
        #expect(log.contains("a host identity may not call"), "the refusal is logged with its reason")
    }

    /// A revoked operator certificate: refused in the handshake once the controller has given the agents
    /// its revocation list (`vsphere-controller revoke`), while the others go on.
    @Test func revokedCertificatesAreRefused() async throws {
        let dir = "\(Testbed.dir)/revoked-operator"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (rc, out) = try Testbed.run([
            Testbed.controllerBinary, "issue", "--data-dir", "\(Testbed.dir)/controller", "--name", "leaver", "--role", "operator",
            "--out", dir, "--prefix", "client", "--days", "1",
        ])
        #expect(rc == 0, "\(out)")
        let base = "https://\(try Testbed.address("h1")):7443"
        let leaver = try AgentClient(base: base, clientCertificate: "\(dir)/client.crt", clientKey: "\(dir)/client.key")
        #expect(try await leaver.get("/v1/host").status == 200, "an operator identity is served")
        let (bad, badOut) = try Testbed.run([Testbed.controllerBinary, "revoke", "--data-dir", "\(Testbed.dir)/controller", "--serial", "xyz"])
        #expect(bad == 64 && badOut.contains("--serial"), "\(bad) \(badOut)")
        let (rrc, rout) = try Testbed.run([Testbed.controllerBinary, "revoke", "--data-dir", "\(Testbed.dir)/controller", "--certificate", "\(dir)/client.crt"])
        #expect(rrc == 0, "\(rout)")
        defer {
            // Leave the cluster's list as it was: other tests issue and rotate certificates.
            try? FileManager.default.removeItem(atPath: "\(Testbed.dir)/controller/pki/revoked.txt")
        }
        let refused = try await eventually("the revoked certificate refused", timeout: .seconds(30)) { () -> Bool? in
            do { _ = try await AgentClient(base: base, clientCertificate: "\(dir)/client.crt", clientKey: "\(dir)/client.key").get("/v1/host"); return nil } catch { return true }
        }
        #expect(refused)
        #expect(try await Testbed.agent("h1").get("/v1/host").status == 200, "the others are still served")
        let list = try await Testbed.agent("h2").get("/v1/revoked-certificates")
        var serial = Substring(try Testbed.run(["openssl", "x509", "-in", "\(dir)/client.crt", "-noout", "-serial"]).1
            .trimmingCharacters(in: .whitespacesAndNewlines).lowercased().replacingOccurrences(of: "serial=", with: ""))
        while serial.count > 1 && serial.hasPrefix("0") { serial = serial.dropFirst() }
        #expect(try JSONDecoder().decode(RevokedCertificates.self, from: list.body).serials.contains(String(serial)))
    }
}

extension ClusterOnTestbed {
/// Certificate rotation: a host's identity is issued again by the cluster CA and its agent restarted;
/// it serves the new certificate and the controller takes it back without being told.
@Suite(.serialized, .enabled(if: Testbed.available && !Testbed.controllerBinary.isEmpty && !Testbed.ctlBinary.isEmpty, "needs the testbed and the binaries"))
struct CertificateRotationOnTestbed {
    /// The serial number of the certificate the agent presents.
    func servedSerial(_ host: String) throws -> String {
        let addr = try Testbed.address(host)
        let (_, out) = try Testbed.run([
            "sh", "-c",
            "openssl s_client -connect \(addr):7443 -CAfile \(Testbed.clusterCA) -cert \(Testbed.clientCertificate) -key \(Testbed.clientKey) </dev/null 2>/dev/null | openssl x509 -noout -serial",
        ])
        return out.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func agentCertificateRotates() async throws {
        let before = try servedSerial("h2")
        #expect(before.hasPrefix("serial="), "\(before)")
        let addr = try Testbed.address("h2")
        let (rc, out) = try Testbed.run([
            Testbed.controllerBinary, "issue", "--data-dir", "\(Testbed.dir)/controller", "--name", "h2", "--san", addr,
            "--out", "\(Testbed.dir)/h2/agent/tls", "--prefix", "agent", "--days", "30",
        ])
        #expect(rc == 0, "\(out)")
        #expect(try Testbed.run(["bash", Testbed.script, "restart-agent", "h2"]).0 == 0)
        let after = try servedSerial("h2")
        #expect(after.hasPrefix("serial=") && after != before, "\(before) → \(after)")
        #expect(try await Testbed.agent("h2").get("/v1/host").status == 200)
        // The controller reaches it again through the same CA (it observes every host each second: after
        // a few passes the state it shows comes from the restarted agent).
        try await Task.sleep(for: .seconds(3))
        let connected = try eventuallySync(timeout: 60) { () -> Bool? in
            let (_, out) = try Testbed.run([Testbed.ctlBinary, "get", "hosts", "-o", "json"])
            let hosts = try JSONDecoder().decode([HostView].self, from: Data(out.utf8))
            return hosts.first { $0.name == "h2" }?.state == "connected" ? true : nil
        }
        #expect(connected)
    }
}
}

extension ClusterOnTestbed {
/// A host joins with a one-time token: it pins the cluster CA by fingerprint, keeps its own key, gets
/// a certificate for its name and address; the token works once.
@Suite(.serialized, .enabled(if: Testbed.available && !Testbed.ctlBinary.isEmpty, "needs the testbed and VSPHERE_CTL_BIN"))
struct HostJoinOnTestbed {
    func ctl(_ args: String...) throws -> (Int32, String) { try Testbed.run([Testbed.ctlBinary] + args) }

    func servedSerial(_ host: String) throws -> String {
        let addr = try Testbed.address(host)
        return try Testbed.run([
            "sh", "-c",
            "openssl s_client -connect \(addr):7443 -CAfile \(Testbed.clusterCA) -cert \(Testbed.clientCertificate) -key \(Testbed.clientKey) </dev/null 2>/dev/null | openssl x509 -noout -serial",
        ]).1.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func hostJoinsWithAOneTimeToken() async throws {
        #expect(try ctl("host", "join-token", "nohost").0 == 3, "only hosts of the desired state")
        let (rc, out) = try ctl("host", "join-token", "h2", "-o", "json")
        #expect(rc == 0, "\(out)")
        let token = try JSONDecoder().decode(JoinToken.self, from: Data(out.utf8))
        let dir = "\(Testbed.dir)/h2/join"
        try? FileManager.default.removeItem(atPath: dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let server = "https://10.250.1.254:8443"

        // A controller presenting another CA is not trusted with the token.
        let (wrong, wrongOut) = try ctl("host", "join", "h2", "--server", server, "--join-token", token.token,
                                        "--ca-fingerprint", String(repeating: "0", count: 64), "--out", dir)
        #expect(wrong == 1 && wrongOut.contains("not joining"), "\(wrongOut)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/agent.key"))

        let (joined, joinedOut) = try ctl("host", "join", "h2", "--server", server, "--join-token", token.token, "--ca-fingerprint", token.caFingerprint, "--out", dir)
        #expect(joined == 0, "\(joinedOut)")
        let (again, againOut) = try ctl("host", "join", "h2", "--server", server, "--join-token", token.token, "--ca-fingerprint", token.caFingerprint, "--out", dir + "-again")
        #expect(again == 1 && againOut.contains("token"), "a token works once: \(againOut)")
        try? FileManager.default.removeItem(atPath: dir + "-again")

        // Signed by the cluster CA, for h2's name and address, and the key stayed private.
        #expect(try Testbed.run(["openssl", "verify", "-CAfile", Testbed.clusterCA, dir + "/agent.crt"]).0 == 0)
        let text = try Testbed.run(["openssl", "x509", "-in", dir + "/agent.crt", "-noout", "-text"]).1
        let h2 = try Testbed.address("h2")
        #expect(text.contains("DNS:h2") && text.contains("IP Address:\(h2)"), "\(text)")
        let attrs = try FileManager.default.attributesOfItem(atPath: dir + "/agent.key")
        #expect((attrs[.posixPermissions] as? Int ?? 0) & 0o077 == 0)

        // The agent serves it after a restart, and the controller takes it back.
        for f in ["agent.crt", "agent.key", "cluster-ca.crt"] {
            let target = "\(Testbed.dir)/h2/agent/tls/\(f)"
            try? FileManager.default.removeItem(atPath: target)
            try FileManager.default.copyItem(atPath: "\(dir)/\(f)", toPath: target)
        }
        #expect(try Testbed.run(["bash", Testbed.script, "restart-agent", "h2"]).0 == 0)
        let issued = try Testbed.run(["openssl", "x509", "-in", dir + "/agent.crt", "-noout", "-serial"]).1.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try servedSerial("h2") == issued)
        try await Task.sleep(for: .seconds(3))
        let connected = try eventuallySync(timeout: 60) { () -> Bool? in
            let hosts = try JSONDecoder().decode([HostView].self, from: Data(ctl("get", "hosts", "-o", "json").1.utf8))
            return hosts.first { $0.name == "h2" }?.state == "connected" ? true : nil
        }
        #expect(connected)
    }
}
}

/// The systemd units in systemd/ pass `systemd-analyze verify` (with ExecStart pointing at the binaries
/// just built, since nothing is installed under /usr/local/bin here).
@Suite(.enabled(if: !Testbed.agentBinary.isEmpty && FileManager.default.fileExists(atPath: "/usr/bin/systemd-analyze"), "needs the binaries and systemd-analyze"))
struct SystemdUnits {
    @Test(arguments: ["vsphere-agent", "vsphere-controller"]) func unitVerifies(_ name: String) throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let unit = try String(contentsOf: root.appendingPathComponent("systemd/\(name).service"), encoding: .utf8)
        let bin = URL(fileURLWithPath: Testbed.agentBinary).deletingLastPathComponent().path
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vs-units-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("\(name).service").path
        try unit.replacingOccurrences(of: "/usr/local/bin/", with: bin + "/").write(toFile: path, atomically: true, encoding: .utf8)
        let (rc, out) = try Testbed.run(["systemd-analyze", "verify", path])
        #expect(rc == 0 && out.isEmpty, "\(name): \(out)")
        #expect(unit.contains("NoNewPrivileges=yes") && unit.contains("ProtectHome=yes") && unit.contains("PrivateTmp=yes"))
    }
}

extension ClusterOnTestbed.AgentOnTestbed {
    /// A VM's disks come from pools (or the host's diskDirs): a host file or a block device named as a
    /// disk is refused with its field, and nothing is defined; `disks/release` removes only images the
    /// agent prepared or that lie in its pools, never any other file it is told about.
    @Test func disksAreConfinedToPools() async throws {
        let agent = try Testbed.agent("h1")
        for bad in ["/etc/shadow", "/dev/sda", "\(Testbed.dir)/../../../etc/passwd", "/var/lib/vsphere-testbed-evil/x.qcow2"] {
            let spec = VMSpec(
                name: "confined", cpus: 1, memoryMiB: 128,
                boot: .init(kernel: Testbed.guestDir + "/vmlinuz", initrd: Testbed.guestDir + "/initrd.img", cmdline: "console=ttyS0"),
                disks: [.init(path: bad, format: "raw")])
            let r = try await agent.put("/v1/vms/confined", spec)
            #expect(r.status == 400 && r.text.contains("disks[0].path"), "\(bad): \(r.status) \(r.text)")
        }
        #expect(try await agent.get("/v1/vms/confined").status == 404, "nothing was defined")

        // A file outside the pools that the agent did not prepare survives a release, whatever the caller says.
        let victimDir = "/var/lib/vsphere-confinement-\(UInt32.random(in: 0...UInt32.max))"
        let victim = "\(victimDir)/precious.qcow2"
        try FileManager.default.createDirectory(atPath: victimDir, withIntermediateDirectories: true)
        try "precious".write(toFile: victim, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: victimDir) }
        let release = try await agent.post("/v1/disks/release", ["paths": [victim, "/etc/hostname", "\(Testbed.dir)/h1/../../../etc/hostname"]])
        #expect(release.status == 200, "\(release.text)")
        #expect(try JSONDecoder().decode([String: [String]].self, from: release.body)["removed"] == [], "\(release.text)")
        #expect(FileManager.default.fileExists(atPath: victim) && FileManager.default.fileExists(atPath: "/etc/hostname"))

        // One it prepared (outside any VM) is released.
        let prepared = "\(Testbed.dir)/h1/prepared-\(UInt32.random(in: 0...UInt32.max)).qcow2"
        let prep = try await agent.post("/v1/disks/prepare", DiskPrepare(disks: [.init(target: "vda", path: prepared, format: "qcow2", virtualSize: 1 << 20, actualSize: 0)]))
        #expect(prep.status == 200, "\(prep.text)")
        #expect(FileManager.default.fileExists(atPath: prepared))
        let again = try await agent.post("/v1/disks/release", ["paths": [prepared]])
        #expect(try JSONDecoder().decode([String: [String]].self, from: again.body)["removed"] == [prepared], "\(again.text)")
        #expect(!FileManager.default.fileExists(atPath: prepared))
        // And preparing outside the pools is refused like a definition.
        let outside = try await agent.post("/v1/disks/prepare", DiskPrepare(disks: [.init(target: "vda", path: "/etc/cron.d/x", format: "raw", virtualSize: 1 << 20, actualSize: 0)]))
        #expect(outside.status == 400 && outside.text.contains("disks[0].path"), "\(outside.text)")
    }
}
