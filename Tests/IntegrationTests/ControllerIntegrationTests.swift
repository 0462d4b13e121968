import ClusterModel
import ControllerAPI
import Foundation
import Testing

/// Suites that change the cluster's VMs through the controller run one after the other: an
/// `apply --prune` in one would delete the others' VMs.
@Suite(.serialized) enum ClusterOnTestbed {}

extension ClusterOnTestbed {
/// The controller on the testbed, driven through the real CLI as an operator would.
@Suite(.serialized, .enabled(if: Testbed.available && !Testbed.ctlBinary.isEmpty, "needs the testbed and VSPHERE_CTL_BIN"))
struct ControllerOnTestbed {
    func ctl(_ args: String...) throws -> (Int32, String) { try Testbed.run([Testbed.ctlBinary] + args) }

    func manifest(_ vms: [(name: String, anti: [String])], file: String) throws -> String {
        let g = Testbed.guestDir
        let items = vms.map { vm in
            let anti = vm.anti.isEmpty ? "" : #","placement":{"antiAffinity":[\#(vm.anti.map { "\"\($0)\"" }.joined(separator: ","))]}"#
            return #"{"name":"\#(vm.name)","cpus":1,"memoryMiB":128,"boot":{"kernel":"\#(g)/vmlinuz","initrd":"\#(g)/initrd.img","cmdline":"console=ttyS0 vs.name=\#(vm.name)"},"nics":[{"network":"lan"}]\#(anti)}"#
        }
        let doc = #"{"apiVersion":"vsphere/v1","kind":"Cluster","metadata":{"name":"it"},"vms":[\#(items.joined(separator: ","))]}"#
        let path = "\(Testbed.dir)/\(file)"
        try doc.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func vms() throws -> [VMView] {
        let (rc, out) = try ctl("get", "vms", "-o", "json")
        #expect(rc == 0, "\(out)")
        return try JSONDecoder().decode([VMView].self, from: Data(out.utf8))
    }

    /// Domains libvirt has on a host (every state), straight from virsh.
    func domains(_ host: String, running: Bool = false) throws -> [String] {
        let (_, out) = try Testbed.run(["bash", Testbed.script, "exec", host, "virsh", "-c", "qemu:///system", "list", running ? "--state-running" : "--all", "--name"])
        return out.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
    }

    /// An operator's manifest cannot make the controller run a program or read a file: power commands
    /// and password files in it are refused (exit 2, each with its field and the reason), nothing is
    /// applied; and a VM whose start keeps failing ends `apply --wait` early with the error.
    @Test func manifestsCannotRunCodeAndFailuresEndTheWait() throws {
        let doc = #"{"apiVersion":"vsphere/v1","kind":"Cluster","hosts":[{"name":"h9","agent":"https://10.250.1.9:7443","power":{"driver":"command","on":"touch /tmp/pwned","off":"touch /tmp/pwned"}},{"name":"h8","power":{"driver":"ipmi","address":"10.250.1.8","passwordFile":"/var/lib/vsphere-testbed/controller/pki/ca.key"}}]}"#
        let path = "\(Testbed.dir)/power-code.json"
        try doc.write(toFile: path, atomically: true, encoding: .utf8)
        let (rc, out) = try ctl("apply", "-f", path)
        #expect(rc == 2, "\(out)")
        #expect(out.contains("hosts[0].power.on: a manifest carries no commands") && out.contains("hosts[1].power.passwordFile: a manifest names no file"), "\(out)")
        let hosts = try JSONDecoder().decode([HostView].self, from: Data(ctl("get", "hosts", "-o", "json").1.utf8))
        #expect(!hosts.contains { $0.name == "h9" || $0.name == "h8" }, "nothing applied")
        #expect(!FileManager.default.fileExists(atPath: "/tmp/pwned"))

        // A VM whose kernel is not on the host: every start fails, and the wait says so early.
        let g = Testbed.guestDir
        let broken = #"{"apiVersion":"vsphere/v1","kind":"Cluster","vms":[{"name":"nokernel","cpus":1,"memoryMiB":128,"boot":{"kernel":"\#(g)/no-such-vmlinuz","initrd":"\#(g)/initrd.img","cmdline":"console=ttyS0"},"nics":[{"network":"lan"}]}]}"#
        let brokenPath = "\(Testbed.dir)/nokernel.json"
        try broken.write(toFile: brokenPath, atomically: true, encoding: .utf8)
        defer { _ = try? ctl("delete", "vm", "nokernel") }
        let (wrc, wout) = try ctl("apply", "-f", brokenPath, "--wait", "--timeout", "600")
        #expect(wrc == 1 && wout.contains("nokernel: ") && wout.contains("failed 3 times in a row") && wout.contains("gave up waiting"), "\(wout)")
        #expect(wout.contains("no-such-vmlinuz"), "the host's own error names what is missing: \(wout)")
    }

    /// A flood of calls without credentials gets 429 once the client's burst is spent, never a 5xx,
    /// and the controller goes on serving everyone else.
    @Test func callsWithoutCredentialsAreRateLimited() throws {
        let ca = "\(Testbed.dir)/controller/tls/controller-ca.crt"
        let url = "https://10.250.1.254:8443/v1/ca"
        // One output per URL: curl pairs each -o with a URL in turn.
        let (rc, out) = try Testbed.run(["curl", "-s", "--no-progress-meter", "--cacert", ca, "--parallel", "--parallel-max", "40", "-w", "%{http_code}\n"]
            + (0..<400).flatMap { _ in [url, "-o", "/dev/null"] })
        #expect(rc == 0, "\(out)")
        let codes = out.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).map(String.init).filter { $0.count == 3 && Int($0) != nil }
        #expect(codes.count == 400 && codes.contains("429") && codes.contains("200"), "\(Set(codes))")
        #expect(!codes.contains { $0.hasPrefix("5") })
        #expect(try ctl("get", "hosts").0 == 0, "an authenticated client is served meanwhile")
    }

    @Test func hostsAreRegistered() throws {
        let (rc, out) = try ctl("get", "hosts", "-o", "json")
        #expect(rc == 0)
        let hosts = try JSONDecoder().decode([HostView].self, from: Data(out.utf8))
        #expect(hosts.map(\.name) == ["h1", "h2"])
        let connected = try eventuallySync { try JSONDecoder().decode([HostView].self, from: Data(ctl("get", "hosts", "-o", "json").1.utf8)).allSatisfy { $0.state == "connected" } ? true : nil }
        #expect(connected)
    }

    /// apply → VMs run where placement put them (virsh agrees), anti-affinity spreads them, a
    /// second apply changes nothing, delete removes them from the hosts.
    @Test func applyPlacesAndRunsVMs() throws {
        let file = try manifest([("app1", ["app2"]), ("app2", []), ("app3", [])], file: "apply.json")
        let (plan, planOut) = try ctl("plan", "-f", file, "-o", "json")
        #expect(plan == 0, "\(planOut)")
        let planned = try JSONDecoder().decode(ApplyResponse.self, from: Data(planOut.utf8))
        #expect(planned.changes.map(\.action) == ["create", "create", "create"])
        #expect(try vms().filter { $0.name.hasPrefix("app") }.isEmpty, "plan changes nothing")

        let (rc, out) = try ctl("apply", "-f", file, "--wait", "--timeout", "180", "-o", "json")
        #expect(rc == 0, "\(out)")
        let all = try vms().filter { $0.name.hasPrefix("app") }
        #expect(all.count == 3)
        for vm in all {
            #expect(vm.state == "running")
            let host = try #require(vm.host)
            #expect(try domains(host, running: true).contains(vm.name), "virsh on \(host) runs \(vm.name)")
            let other = host == "h1" ? "h2" : "h1"
            #expect(try !domains(other).contains(vm.name), "\(vm.name) only on \(host)")
        }
        let at = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0.host) })
        #expect(at["app1"] != at["app2"], "anti-affinity keeps app1 and app2 apart")

        // The hosts' libvirt events reach the controller's event log, attributed to their host.
        let started = try eventuallySync(timeout: 30) { () -> [EventView]? in
            let (_, out) = try ctl("get", "events", "-o", "json")
            let events = try JSONDecoder().decode([EventView].self, from: Data(out.utf8))
            let mine = events.filter { $0.kind == "lifecycle" && $0.event == "started" && $0.name?.hasPrefix("app") == true }
            return mine.count >= 3 ? mine : nil
        }
        for e in started { #expect(e.source == at[e.name ?? ""] ?? nil, "\(e.name ?? "") started on \(e.source)") }

        // Every action is a task: place, define and start for each VM.
        let (_, tasksOut) = try ctl("get", "tasks", "-o", "json")
        let tasks = try JSONDecoder().decode([TaskView].self, from: Data(tasksOut.utf8)).filter { $0.name.hasPrefix("app") }
        for vm in ["app1", "app2", "app3"] {
            #expect(Set(tasks.filter { $0.name == vm && $0.state == "done" }.map(\.action)).isSuperset(of: ["place", "define", "start"]), "\(vm)")
        }

        let (again, againOut) = try ctl("apply", "-f", file, "-o", "json")
        #expect(again == 0)
        #expect(try JSONDecoder().decode(ApplyResponse.self, from: Data(againOut.utf8)).changes.isEmpty, "a second apply changes nothing")

        // --prune: a document without app2 deletes it, from the desired state and from its host.
        let smaller = try manifest([("app1", []), ("app3", [])], file: "apply-pruned.json")
        let (prc, pout) = try ctl("apply", "-f", smaller, "--prune", "-o", "json")
        #expect(prc == 0, "\(pout)")
        let pruned = try JSONDecoder().decode(ApplyResponse.self, from: Data(pout.utf8)).changes
        #expect(pruned.map { "\($0.action) \($0.name)" } == ["update app1", "delete app2"], "app1 lost its anti-affinity rule; app2 goes")
        _ = try eventuallySync(timeout: 60) { try (domains("h1") + domains("h2")).contains("app2") ? nil : true }

        let (del, delOut) = try ctl("delete", "-f", smaller)
        #expect(del == 0, "\(delOut)")
        _ = try eventuallySync(timeout: 60) {
            try (domains("h1") + domains("h2")).contains(where: { $0.hasPrefix("app") }) ? nil : true
        }
        #expect(try vms().filter { $0.name.hasPrefix("app") }.isEmpty)
    }

    /// kill -9 of the controller in the middle of an apply; after a restart on the same database the
    /// cluster converges: every VM runs, each on exactly one host.
    @Test func killDashNineMidApplyConverges() throws {
        let names = ["kill1", "kill2", "kill3", "kill4"]
        let file = try manifest(names.map { ($0, []) }, file: "kill.json")
        let (rc, out) = try ctl("apply", "-f", file)
        #expect(rc == 0, "\(out)")
        usleep(400_000)  // the reconciler is placing and defining now
        let (krc, kout) = try Testbed.run(["bash", Testbed.script, "restart-controller", "--kill"])
        #expect(krc == 0, "\(kout)")
        let (wrc, wout) = try ctl("apply", "-f", file, "--wait", "--timeout", "180", "-o", "json")
        #expect(wrc == 0, "\(wout)")
        let views = try vms().filter { names.contains($0.name) }
        #expect(views.count == 4)
        #expect(views.allSatisfy { $0.state == "running" })
        let everywhere = try domains("h1") + domains("h2")
        for n in names { #expect(everywhere.filter { $0 == n }.count == 1, "\(n) defined exactly once") }
        #expect(try ctl("delete", "-f", file).0 == 0)
        _ = try eventuallySync(timeout: 60) { try (domains("h1") + domains("h2")).contains(where: { names.contains($0) }) ? nil : true }
    }

    @Test func badInputExitsTwoAndChangesNothing() throws {
        let bad = "\(Testbed.dir)/bad.json"
        try #"{"apiVersion":"vsphere/v1","kind":"Cluster","vms":[{"name":"ok1","cpus":1,"memoryMiB":8,"nics":[{"network":"nope"}]}]}"#
            .write(toFile: bad, atomically: true, encoding: .utf8)
        let (vrc, vout) = try ctl("validate", "-f", bad)
        #expect(vrc == 2)
        #expect(vout.contains("vms[0].memoryMiB: must be at least 16"))
        let (arc, aout) = try ctl("apply", "-f", bad)
        #expect(arc == 2, "\(aout)")
        // Valid alone, but its network does not exist in the cluster: refused by the controller.
        try #"{"apiVersion":"vsphere/v1","kind":"Cluster","vms":[{"name":"ok1","cpus":1,"memoryMiB":64,"nics":[{"network":"nope"}]}]}"#
            .write(toFile: bad, atomically: true, encoding: .utf8)
        let (mrc, mout) = try ctl("apply", "-f", bad)
        #expect(mrc == 2, "\(mout)")
        #expect(mout.contains("vms[") && mout.contains("no network named nope"))
        #expect(try vms().allSatisfy { $0.name != "ok1" })
        #expect(try ctl("describe", "vm", "ok1").0 == 3, "not found is exit 3")
    }
}
}

func eventuallySync<T>(timeout: Double = 90, _ body: () throws -> T?) throws -> T {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if let v = try body() { return v }
        usleep(500_000)
    }
    throw TestFailure("timed out after \(timeout) s")
}

extension ClusterOnTestbed {
/// Users and roles on the controller: no token → 401; a viewer reads but may not change (403); an
/// operator changes but may not manage tokens; a revoked token stops working. Every change and every
/// refused one is in the audit log with who made it; changing a record breaks `audit verify`.
@Suite(.serialized, .enabled(if: Testbed.available && !Testbed.ctlBinary.isEmpty, "needs the testbed and VSPHERE_CTL_BIN"))
struct AuthOnTestbed {
    /// The CLI with the testbed's admin config, another token, or none at all.
    func ctl(_ args: [String], token: String? = nil, anonymous: Bool = false) throws -> (Int32, String) {
        if anonymous || token != nil {
            let config = "\(Testbed.dir)/ctl-\(anonymous ? "anonymous" : "user").json"
            let tokenField = token.map { #", "token": "\#($0)""# } ?? ""
            try #"{"server": "https://10.250.1.254:8443", "ca": "\#(Testbed.dir)/controller/tls/controller-ca.crt"\#(tokenField)}"#
                .write(toFile: config, atomically: true, encoding: .utf8)
            return try Testbed.run(["env", "-u", "VSPHERE_TOKEN", "VSPHERE_CONFIG=\(config)", Testbed.ctlBinary] + args)
        }
        return try Testbed.run([Testbed.ctlBinary] + args)
    }

    func newToken(_ name: String, _ role: String) throws -> String {
        let (rc, out) = try ctl(["token", "create", name, "--role", role, "-o", "json"])
        #expect(rc == 0, "\(out)")
        return try #require(try JSONDecoder().decode(TokenView.self, from: Data(out.utf8)).token)
    }

    /// Prometheus metrics: the controller's for a token holder, the agents' for clients of the cluster CA.
    @Test func metricsAreServed() throws {
        let token = try String(contentsOfFile: "\(Testbed.dir)/controller/admin.token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let ca = "\(Testbed.dir)/controller/tls/controller-ca.crt"
        let (_, anonymous) = try Testbed.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca, "https://10.250.1.254:8443/metrics"])
        #expect(anonymous == "401")
        let (rc, text) = try Testbed.run(["curl", "-sf", "--cacert", ca, "-H", "Authorization: Bearer \(token)", "https://10.250.1.254:8443/metrics"])
        #expect(rc == 0, "\(text)")
        #expect(text.contains("# TYPE vsphere_hosts gauge") && text.contains(#"vsphere_hosts{state="connected"} \#(Testbed.hostCount)"#), "\(text)")
        #expect(text.contains(#"vsphere_vms{state="running"}"#) && text.contains("vsphere_event_lag_seconds_bucket") && text.contains("vsphere_migrations"))
        let addr = try Testbed.address("h1")
        let (arc, agent) = try Testbed.run(["curl", "-sf", "--cacert", Testbed.clusterCA, "--cert", Testbed.clientCertificate, "--key", Testbed.clientKey, "https://\(addr):7443/metrics"])
        #expect(arc == 0, "\(agent)")
        #expect(agent.contains("vsphere_agent_libvirt_connected 1") && agent.contains(#"vsphere_agent_vms{state="running"}"#) && agent.contains("vsphere_agent_memory_total_bytes"), "\(agent)")
        // The agent's own memory, as the kernel counts it: some resident, never above its peak.
        func gauge(_ name: String) -> Double? {
            agent.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ")[1]) }
        }
        let resident = try #require(gauge("vsphere_agent_resident_bytes")), peak = try #require(gauge("vsphere_agent_resident_peak_bytes"))
        let anon = try #require(gauge("vsphere_agent_resident_anonymous_bytes"))
        #expect(resident > 1_048_576 && anon > 0 && anon < resident && resident <= peak, "\(resident) \(anon) \(peak)")
    }

    /// A quiet event stream carries a comment every 20 s: a client that went away is noticed on that
    /// write (its subscription and connection used to stay until the host's next event).
    @Test func quietEventStreamsCarryAHeartbeat() throws {
        let addr = try Testbed.address("h2")
        let (_, text) = try Testbed.run(["curl", "-sN", "--max-time", "25", "--cacert", Testbed.clusterCA, "--cert", Testbed.clientCertificate, "--key", Testbed.clientKey,
                                         "https://\(addr):7443/v1/events?since=\(Int64.max - 1)"])
        #expect(text.hasPrefix(": vsphere-agent events\n\n") && text.contains("\n: keepalive\n\n"), "\(text)")
    }

    @Test func rolesAreCheckedAndChangesAudited() async throws {
        let (anon, anonOut) = try ctl(["get", "vms"], anonymous: true)
        #expect(anon == 1 && anonOut.contains("credentials required"), "\(anonOut)")
        #expect(try ctl(["delete", "vm", "ghost"], anonymous: true).0 == 1)

        let viewer = try newToken("alice", "viewer")
        let operatorToken = try newToken("bob", "operator")
        #expect(try ctl(["get", "vms"], token: viewer).0 == 0, "a viewer reads")
        let (v403, v403Out) = try ctl(["delete", "vm", "ghost"], token: viewer)
        #expect(v403 == 1 && v403Out.contains("needs operator"), "\(v403Out)")
        #expect(try ctl(["delete", "vm", "ghost"], token: operatorToken).0 == 3, "an operator may: the VM is just not there")
        let (o403, o403Out) = try ctl(["token", "list"], token: operatorToken)
        #expect(o403 == 1 && o403Out.contains("needs admin"), "\(o403Out)")
        #expect(try ctl(["token", "list"]).1.contains("alice"))

        #expect(try ctl(["token", "revoke", "alice"]).0 == 0)
        try await Task.sleep(for: .milliseconds(2500))
        let (revoked, revokedOut) = try ctl(["get", "vms"], token: viewer)
        #expect(revoked == 1 && revokedOut.contains("credentials required"), "a revoked token is refused: \(revokedOut)")

        // Who did what, refused attempts included.
        let (arc, aout) = try ctl(["audit", "-o", "json"])
        #expect(arc == 0, "\(aout)")
        let log = try JSONDecoder().decode([AuditRecord].self, from: Data(aout.utf8))
        #expect(log.contains { $0.actor == "anonymous" && $0.method == "DELETE" && $0.path == "/v1/vms/ghost" && $0.status == 401 })
        #expect(log.contains { $0.actor == "alice" && $0.role == "viewer" && $0.path == "/v1/vms/ghost" && $0.status == 403 })
        #expect(log.contains { $0.actor == "bob" && $0.role == "operator" && $0.path == "/v1/vms/ghost" && $0.status == 404 })
        #expect(log.contains { $0.actor == "admin" && $0.method == "DELETE" && $0.path == "/v1/tokens/alice" && $0.status == 200 })
        #expect(!log.contains { $0.method == "GET" }, "reads are not changes")
        let (vrc, vout) = try ctl(["audit", "verify"])
        #expect(vrc == 0 && vout.contains("intact"), "\(vout)")

        // Tampering with one record (here straight in the SQLite file) is detected.
        let db = "\(Testbed.dir)/controller/state.db"
        guard FileManager.default.fileExists(atPath: db) else { return }
        let target = try #require(log.first { $0.actor == "bob" })
        func setActor(_ actor: String) throws {
            let (rc, out) = try Testbed.run(["python3", "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('UPDATE audit SET actor=? WHERE id=?', (sys.argv[2], int(sys.argv[3]))); c.commit()", db, actor, String(target.id)])
            #expect(rc == 0, "\(out)")
        }
        try setActor("mallory")
        let (trc, tout) = try ctl(["audit", "verify"])
        #expect(trc == 1 && tout.contains("TAMPERED") && tout.contains("record \(target.id) was changed"), "\(tout)")
        try setActor("bob")
        #expect(try ctl(["audit", "verify"]).0 == 0, "restored")
        _ = try ctl(["token", "revoke", "bob"])
    }
}
}

/// Every vsphere-ctl command parses its own definition (ArgumentParser checks it at run time: two
/// options with one name only fail when the command is used).
@Suite(.enabled(if: !Testbed.ctlBinary.isEmpty, "needs VSPHERE_CTL_BIN"))
struct CLIDefinitions {
    @Test(arguments: ["validate", "plan", "apply", "get", "describe", "delete", "vm", "migration", "events", "drs", "dpm", "host",
                      "simulate", "token", "audit"])
    func helpWorks(command: String) throws {
        let (rc, out) = try Testbed.run([Testbed.ctlBinary, command, "--help"])
        #expect(rc == 0 && !out.contains("Validation failed"), "\(command): \(out)")
    }
}

extension ClusterOnTestbed {
/// Alarms at the virtual layer: a VM destroyed or undefined with virsh behind the controller's back
/// raises a drift alarm and is put back; a domain the controller did not create raises a rogue alarm and
/// is left alone (the alarm clears when it goes); compliance rules report what breaks them.
@Suite(.serialized, .enabled(if: Testbed.available && Testbed.sites == 1 && !Testbed.ctlBinary.isEmpty, "needs the one-site testbed"))
struct AlarmsOnTestbed {
    let t = VMotionHelpers()

    func alarms() throws -> [AlarmView] {
        let (rc, out) = try t.ctl("get", "alarms", "-o", "json")
        #expect(rc == 0, "\(out)")
        return try JSONDecoder().decode([AlarmView].self, from: Data(out.utf8))
    }

    func virsh(_ host: String, _ args: String...) throws -> (Int32, String) {
        try Testbed.run(["bash", Testbed.script, "exec", host, "virsh", "-c", "qemu:///system"] + args)
    }

    @Test func driftIsRepairedAndRoguesAreReported() throws {
        try t.apply("drift1", hosts: ["h1"])
        defer { try? t.delete("drift1") }
        #expect(try t.domains("h1", running: true).contains("drift1"))

        // Destroyed behind the controller's back: alarm, then started again.
        #expect(try virsh("h1", "destroy", "drift1").0 == 0)
        let stopped = try eventuallySync(timeout: 60) { try alarms().first { $0.kind == "drift" && $0.name == "drift1" && $0.message.contains("stopped") } }
        #expect(stopped.host == "h1" && stopped.message.contains("starting it again"))
        #expect(try eventuallySync(timeout: 60) { try t.domains("h1", running: true).contains("drift1") ? true : nil })
        #expect(try eventuallySync(timeout: 30) { try alarms().first { $0.id == stopped.id }?.state == "cleared" ? true : nil }, "cleared once running again")

        // Undefined behind its back while running (libvirt keeps it running, transient): alarm, defined again.
        #expect(try virsh("h1", "undefine", "drift1").0 == 0)
        let undefined = try eventuallySync(timeout: 60) { try alarms().first { $0.kind == "drift" && $0.name == "drift1" && $0.message.contains("undefined") } }
        #expect(undefined.message.contains("defining it again"))
        #expect(try eventuallySync(timeout: 60) { try virsh("h1", "dominfo", "drift1").1.range(of: #"Persistent:\s+yes"#, options: .regularExpression) != nil ? true : nil }, "persistent again")
        #expect(try eventuallySync(timeout: 30) { try alarms().first { $0.id == undefined.id }?.state == "cleared" ? true : nil })

        // Destroyed and undefined: gone from the host; alarm, defined and started again.
        #expect(try Testbed.run(["bash", Testbed.script, "exec", "h1", "sh", "-c", "virsh -c qemu:///system destroy drift1; virsh -c qemu:///system undefine drift1"]).0 == 0)
        #expect(try eventuallySync(timeout: 60) { try alarms().first { $0.kind == "drift" && $0.name == "drift1" && $0.id > undefined.id } } != nil)
        #expect(try eventuallySync(timeout: 90) { try t.domains("h1", running: true).contains("drift1") ? true : nil })

        // Its definition changed behind its back (memory, for the next boot): alarm, defined as desired again.
        #expect(try virsh("h1", "setmaxmem", "drift1", "200M", "--config").0 == 0)
        let changed = try eventuallySync(timeout: 60) { try alarms().first { $0.kind == "drift" && $0.name == "drift1" && $0.message.contains("definition") } }
        #expect(changed.message.contains("200 MiB") && changed.message.contains("defining it again"), "\(changed.message)")
        #expect(try eventuallySync(timeout: 60) { try virsh("h1", "dumpxml", "--inactive", "drift1").1.contains("<memory unit='KiB'>262144</memory>") ? true : nil })
        #expect(try eventuallySync(timeout: 30) { try alarms().first { $0.id == changed.id }?.state == "cleared" ? true : nil })

        // A domain nobody asked the controller for.
        let xml = "\(Testbed.dir)/rogue1.xml"
        try "<domain type='qemu'><name>rogue1</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
            .write(toFile: xml, atomically: true, encoding: .utf8)
        #expect(try virsh("h2", "define", xml).0 == 0)
        defer { _ = try? virsh("h2", "undefine", "rogue1") }
        let rogue = try eventuallySync(timeout: 60) { try alarms().first { $0.kind == "rogue-vm" && $0.name == "rogue1" && $0.state == "active" } }
        #expect(rogue.host == "h2")
        #expect(try t.ctl("alarm", "ack", String(rogue.id)).0 == 0)
        #expect(try alarms().first { $0.id == rogue.id }?.state == "acknowledged")
        try Task.checkCancellation()
        #expect(try t.domains("h2").contains("rogue1"), "not ours: left alone")
        #expect(try virsh("h2", "undefine", "rogue1").0 == 0)
        #expect(try eventuallySync(timeout: 60) { try alarms().first { $0.id == rogue.id }?.state == "cleared" ? true : nil })

        // The events log carries the alarms too.
        let (_, events) = try t.ctl("get", "events", "-o", "json")
        #expect(events.contains("rogue-vm") && events.contains("drift"))
    }

    /// A VNC console on the host's loopback: a client connecting to it is a graphics event from libvirt
    /// and a console-connection alarm.
    @Test func consoleConnectionRaisesAnAlarm() throws {
        let g = Testbed.guestDir
        let doc = #"{"apiVersion":"vsphere/v1","kind":"Cluster","vms":[{"name":"console1","cpus":1,"memoryMiB":128,"graphics":{"type":"vnc"},"boot":{"kernel":"\#(g)/vmlinuz","initrd":"\#(g)/initrd.img","cmdline":"console=ttyS0 vs.name=console1"},"placement":{"hosts":["h1"]}}]}"#
        let path = "\(Testbed.dir)/console1.json"
        try doc.write(toFile: path, atomically: true, encoding: .utf8)
        #expect(try t.ctl("apply", "-f", path, "--wait", "--timeout", "180").0 == 0)
        defer { try? t.delete("console1") }
        let (rc, display) = try virsh("h1", "vncdisplay", "console1")
        let n = try #require(Int(display.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ":").last ?? ""), "\(rc) \(display)")
        // An RFB client's first steps, from inside the host (the console listens on its loopback).
        let client = "import socket; s = socket.create_connection(('127.0.0.1', \(5900 + n)), 5); print(s.recv(12)); s.sendall(b'RFB 003.008\\n'); s.recv(64); s.close()"
        let (crc, cout) = try Testbed.run(["bash", Testbed.script, "exec", "h1", "python3", "-c", client])
        #expect(crc == 0 && cout.contains("RFB"), "\(cout)")
        let alarm = try eventuallySync(timeout: 30) { try alarms().first { $0.kind == "console-connection" && $0.name == "console1" } }
        #expect(alarm.host == "h1" && alarm.message.contains("127.0.0.1"))
        let (_, events) = try t.ctl("get", "events", "-o", "json")
        #expect(events.contains("\"graphics\""), "libvirt's graphics event is in the log")
    }

    /// A live migration with virsh, behind the controller's back: the source's "migrated" event raises
    /// an unexpected-migration alarm, the VM found on the other host an unexpected-move alarm; the
    /// controller follows it there rather than starting a second copy.
    /// (It failed in full runs only: earlier tests restart agents, and a restarted agent numbered its
    /// events from 1 again, so the controller, reconnecting with the last number it had seen, got none.)
    @Test func migrationBehindTheControllersBack() throws {
        try t.apply("sneaky", hosts: ["h1", "h2"])
        defer { try? t.delete("sneaky") }
        let from = try #require(try t.vm("sneaky").host)
        let to = t.other(from)
        let before = try alarms().map(\.id).max() ?? 0
        let (rc, out) = try virsh(from, "migrate", "--live", "--p2p", "--persistent", "--undefinesource", "sneaky", "qemu+tcp://\(try Testbed.address(to))/system")
        #expect(rc == 0, "\(out)")
        // The reconciler's view: found on the other host without a migration of ours.
        let moved = try eventuallySync(timeout: 60) { try alarms().first { $0.id > before && $0.kind == "unexpected-move" && $0.name == "sneaky" } }
        #expect(moved.host == to)
        // The source's "migrated" event.
        let away = try eventuallySync(timeout: 30) { try alarms().first { $0.id > before && $0.kind == "unexpected-migration" && $0.name == "sneaky" } }
        #expect(away.host == from)
        #expect(try eventuallySync(timeout: 30) { try t.vm("sneaky").host == to ? true : nil })
        try Task.checkCancellation()
        #expect(try t.domains(to, running: true).contains("sneaky") && !(try t.domains(from).contains("sneaky")), "one copy, where it went")
    }

    /// settings.compliance over the desired state: drift1 has no memory limit and no pool.
    @Test func complianceRulesReportViolations() throws {
        try t.apply("comp1", hosts: ["h1", "h2"])
        defer { try? t.delete("comp1") }
        let cluster = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(Testbed.dir)/cluster.json"))) as! [String: Any]
        var settings = cluster["settings"] as? [String: Any] ?? [:]
        func applySettings() throws {
            let doc: [String: Any] = ["apiVersion": "vsphere/v1", "kind": "Cluster", "settings": settings]
            let path = "\(Testbed.dir)/compliance.json"
            try JSONSerialization.data(withJSONObject: doc).write(to: URL(fileURLWithPath: path))
            #expect(try t.ctl("apply", "-f", path).0 == 0)
        }
        let original = settings
        defer {
            settings = original
            try? applySettings()
        }
        settings["compliance"] = ["requireMemoryLimit": true, "maxVCPUs": 4, "allowedNetworks": ["lan"]]
        try applySettings()
        let (rc, out) = try t.ctl("compliance", "-o", "json")
        #expect(rc == 1, "violations exit 1: \(out)")
        let report = try JSONDecoder().decode(Compliance.Report.self, from: Data(out.utf8))
        #expect(report.rules == ["requireMemoryLimit", "maxVCPUs", "allowedNetworks"])
        #expect(report.violations.contains { $0.vm == "comp1" && $0.rule == "requireMemoryLimit" })
        #expect(!report.violations.contains { $0.rule == "allowedNetworks" || $0.rule == "maxVCPUs" })
        settings["compliance"] = ["maxVCPUs": 4]
        try applySettings()
        #expect(try t.ctl("compliance").0 == 0, "compliant with the rules that remain")
    }
}
}
