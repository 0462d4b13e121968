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
