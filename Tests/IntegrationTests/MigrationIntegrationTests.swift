import ControllerAPI
import Foundation
import MigrationPolicy
import Testing

/// Live migration on the testbed through the real CLI: real TCG guests, libvirt peer to peer between
/// the hosts' own libvirtds.
struct VMotionHelpers {
    func ctl(_ args: String...) throws -> (Int32, String) { try Testbed.run([Testbed.ctlBinary] + args) }
    func ctl(_ args: [String]) throws -> (Int32, String) { try Testbed.run([Testbed.ctlBinary] + args) }

    /// A 256 MiB guest; `extra` goes on the kernel command line, `disk` is its root disk.
    func apply(_ name: String, hosts: [String], cmdline extra: String = "", disk: String? = nil) throws {
        let g = Testbed.guestDir
        let root = disk == nil ? "" : " vs.root=/dev/vda"
        let disks = disk.map { #","disks":[{"path":"\#($0)","format":"qcow2"}]"# } ?? ""
        let list = hosts.map { "\"\($0)\"" }.joined(separator: ",")
        let doc = #"{"apiVersion":"vsphere/v1","kind":"Cluster","vms":[{"name":"\#(name)","cpus":1,"memoryMiB":256,"boot":{"kernel":"\#(g)/vmlinuz","initrd":"\#(g)/initrd.img","cmdline":"console=ttyS0 vs.name=\#(name)\#(root) \#(extra)"}\#(disks),"nics":[{"network":"lan"}],"placement":{"hosts":[\#(list)]}}]}"#
        let path = "\(Testbed.dir)/\(name).json"
        try doc.write(toFile: path, atomically: true, encoding: .utf8)
        let (rc, out) = try ctl("apply", "-f", path, "--wait", "--timeout", "180")
        #expect(rc == 0, "\(out)")
    }

    func delete(_ name: String) throws {
        _ = try ctl("delete", "vm", name)
        _ = try eventuallySync(timeout: 60) { try (domains("h1") + domains("h2")).contains(name) ? nil : true }
    }

    func vm(_ name: String) throws -> VMView {
        let (rc, out) = try ctl("get", "vms", "-o", "json")
        #expect(rc == 0, "\(out)")
        return try #require(try JSONDecoder().decode([VMView].self, from: Data(out.utf8)).first { $0.name == name })
    }

    func domains(_ host: String, running: Bool = false) throws -> [String] {
        let (_, out) = try Testbed.run(["bash", Testbed.script, "exec", host, "virsh", "-c", "qemu:///system", "list", running ? "--state-running" : "--all", "--name"])
        return out.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
    }

    func migration(_ ref: String) throws -> MigrationView {
        let (rc, out) = try ctl("migration", "describe", ref, "-o", "json")
        #expect(rc == 0, "\(out)")
        return try JSONDecoder().decode(MigrationView.self, from: Data(out.utf8))
    }

    /// Waits until the guest's console shows it dirtying memory (two passes over its working set).
    func dirtying(_ name: String, on host: String) async throws {
        let agent = try Testbed.agent(host)
        _ = try await eventually("\(name) dirties memory", timeout: .seconds(240)) { () -> Bool? in
            let text = try await agent.get("/v1/vms/\(name)/console").text
            return text.components(separatedBy: "VSPHERE-GUEST-DIRTY passes=").count - 1 >= 2 ? true : nil
        }
    }

    /// `vm migrate --wait -o json`, decoded; the exit status is 0 only for a completed migration.
    func migrate(_ name: String, to: String, _ extra: [String] = []) throws -> (Int32, MigrationView?) {
        let (rc, out) = try ctl(["vm", "migrate", name, "--to", to, "-o", "json", "--timeout", "300"] + extra)
        let view = try? JSONDecoder().decode(MigrationView.self, from: Data(out.utf8))
        if view == nil { Issue.record("vm migrate \(name) --to \(to): exit \(rc): \(out)") }
        return (rc, view)
    }

    func other(_ host: String) -> String { host == "h1" ? "h2" : "h1" }

    /// A linked clone of the guest's disk in h1's own /var/lib/libvirt (no other host sees it); a copy
    /// left on any host by an earlier run is removed first.
    func localDisk(_ name: String) throws -> String {
        let disk = "/var/lib/libvirt/images/\(name).qcow2"
        removeLocalDisk(disk)
        let (rc, out) = try Testbed.run([
            "bash", Testbed.script, "exec", "h1", "sh", "-c",
            "mkdir -p /var/lib/libvirt/images && qemu-img create -q -f qcow2 -b \(Testbed.guestDir)/disk.qcow2 -F qcow2 \(disk)",
        ])
        #expect(rc == 0, "\(out)")
        return disk
    }

    func removeLocalDisk(_ disk: String) {
        for h in ["h1", "h2"] { _ = try? Testbed.run(["bash", Testbed.script, "exec", h, "rm", "-f", disk]) }
    }
}

extension ClusterOnTestbed {
@Suite(.serialized, .enabled(if: Testbed.available && Testbed.sites == 1 && !Testbed.ctlBinary.isEmpty, "needs the one-site testbed"))
struct VMotionOnTestbed {
    let t = VMotionHelpers()

    /// Shared storage: the disk stays in the shared pool; the guest keeps answering pings at its new host.
    @Test func sharedStorageMigration() throws {
        let disk = "\(Testbed.dir)/shared/vmo-shared.qcow2"
        #expect(try Testbed.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", Testbed.guestDir + "/disk.qcow2", "-F", "qcow2", disk]).0 == 0)
        try t.apply("vmo-shared", hosts: ["h1", "h2"], cmdline: "vs.ip=10.250.1.61/24", disk: disk)
        defer { try? t.delete("vmo-shared"); try? FileManager.default.removeItem(atPath: disk) }
        #expect(try eventuallySync(timeout: 120) { try Testbed.ping("10.250.1.61") ? true : nil })
        let from = try #require(try t.vm("vmo-shared").host)
        let to = t.other(from)

        let (rc, m) = try t.migrate("vmo-shared", to: to)
        let done = try #require(m)
        #expect(rc == 0, "\(done)")
        #expect(done.vm == "vmo-shared" && done.from == from && done.to == to && done.result == "completed")
        #expect(done.storage == "shared" && done.copyDisks.isEmpty)
        #expect((done.totalMs ?? 0) > 0 && (done.bytes ?? 0) > 0, "libvirt's numbers recorded")
        #expect(done.downtimeMs != nil)
        #expect(done.predicted != nil, "priced before it started")
        #expect(done.steps.first?.action == "set-downtime")

        #expect(try t.domains(to, running: true).contains("vmo-shared"))
        #expect(try !t.domains(from).contains("vmo-shared"), "undefined on the source")
        #expect(try t.vm("vmo-shared").host == to)
        #expect(try eventuallySync(timeout: 30) { try Testbed.ping("10.250.1.61") ? true : nil }, "the guest lives on")

        // History: predicted next to actual.
        let (hrc, hout) = try t.ctl("get", "migrations")
        #expect(hrc == 0 && hout.contains("PREDICTED MS") && hout.contains("vmo-shared"), "\(hout)")
    }

    /// Over TLS: libvirtd to libvirtd on 16514 and QEMU's own streams (VIR_MIGRATE_TLS), both with the
    /// hosts' certificates from the cluster CA.
    @Test func tlsMigration() throws {
        let cluster = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(Testbed.dir)/cluster.json"))) as! [String: Any]
        let original = cluster["settings"] as? [String: Any] ?? [:]
        func applySettings(_ settings: [String: Any]) throws {
            let path = "\(Testbed.dir)/tls-settings.json"
            try JSONSerialization.data(withJSONObject: ["apiVersion": "vsphere/v1", "kind": "Cluster", "settings": settings]).write(to: URL(fileURLWithPath: path))
            #expect(try t.ctl("apply", "-f", path).0 == 0)
        }
        var tls = original
        var migration = tls["migration"] as? [String: Any] ?? [:]
        migration["transport"] = "tls"
        tls["migration"] = migration
        try applySettings(tls)
        defer { try? applySettings(original) }
        try t.apply("vmo-tls", hosts: ["h1", "h2"])
        defer { try? t.delete("vmo-tls") }
        let from = try #require(try t.vm("vmo-tls").host)
        let to = t.other(from)
        let (rc, m) = try t.migrate("vmo-tls", to: to)
        #expect(rc == 0 && m?.result == "completed", "\(String(describing: m))")
        #expect(try t.domains(to, running: true).contains("vmo-tls"))
        // The source agent's record: the destination was reached over TLS.
        let (_, events) = try t.ctl("get", "events", "-o", "json")
        let addr = try Testbed.address(to)
        #expect(events.contains("qemu+tls://\(addr)/system"), "the migration used qemu+tls")
    }

    /// A local disk (in the host's own /var/lib/libvirt) is copied along; the source's copy goes.
    @Test func localDiskMigration() throws {
        let disk = try t.localDisk("vmo-local")
        // Placed on h1 (where the disk is), then allowed on both.
        try t.apply("vmo-local", hosts: ["h1"], disk: disk)
        defer { try? t.delete("vmo-local"); t.removeLocalDisk(disk) }
        try t.apply("vmo-local", hosts: ["h1", "h2"], disk: disk)

        let (rc, m) = try t.migrate("vmo-local", to: "h2")
        let done = try #require(m)
        #expect(rc == 0, "\(done)")
        #expect(done.storage == "copy-incremental" && done.copyDisks == ["vda"])
        #expect(try t.domains("h2", running: true).contains("vmo-local"))
        let exists = { (h: String) throws -> Bool in try Testbed.run(["bash", Testbed.script, "exec", h, "test", "-e", disk]).0 == 0 }
        #expect(try exists("h2"), "the disk lives on h2 now")
        #expect(try !exists("h1"), "the source's copy was removed")
    }

    /// A guest rewriting 64 MiB of non-zero data, link capped at 8 MiB/s: precopy cannot finish within its
    /// budget (aborted, the guest keeps running at home); post-copy finishes.
    @Test func dirtyGuestNeedsPostCopy() async throws {
        try t.apply("vmo-dirty", hosts: ["h1", "h2"], cmdline: "vs.dirty=64")
        defer { try? t.delete("vmo-dirty") }
        let from = try #require(try t.vm("vmo-dirty").host)
        try await t.dirtying("vmo-dirty", on: from)

        let (rc1, m1) = try t.migrate("vmo-dirty", to: t.other(from), ["--policy", "minimal-downtime", "--bandwidth", "8", "--budget", "20"])
        let aborted = try #require(m1)
        #expect(rc1 == 1)
        #expect(aborted.state == "aborted", "\(aborted)")
        // The first step sets the starting limit; how many raises follow within the 20 s budget depends
        // on how many precopy iterations TCG gets through (one run saw only the first): at least one.
        #expect(aborted.steps.filter { $0.action == "set-downtime" }.count >= 1, "downtime set before giving up")
        #expect(aborted.steps.last { $0.action != "note" }?.action == "abort")
        #expect(try t.domains(from, running: true).contains("vmo-dirty"), "still running at home")
        #expect(try !t.domains(t.other(from)).contains("vmo-dirty"))
        #expect(try t.vm("vmo-dirty").host == from)

        let (rc2, m2) = try t.migrate("vmo-dirty", to: t.other(from), ["--policy", "post-copy", "--bandwidth", "8", "--budget", "60"])
        let post = try #require(m2)
        #expect(rc2 == 0, "\(post)")
        #expect(post.steps.contains { $0.action == "post-copy" })
        #expect(try t.domains(t.other(from), running: true).contains("vmo-dirty"))
        #expect(try t.vm("vmo-dirty").host == t.other(from))
    }

    /// `migration cancel` aborts cleanly; the destination's QEMU dying does too; in both cases the VM runs
    /// on the source and the controller says so.
    @Test func cancelAndDestinationDeath() async throws {
        try t.apply("vmo-cancel", hosts: ["h1", "h2"], cmdline: "vs.dirty=64")
        defer { try? t.delete("vmo-cancel") }
        let from = try #require(try t.vm("vmo-cancel").host)
        let to = t.other(from)
        try await t.dirtying("vmo-cancel", on: from)

        // Cancel.
        var (rc, out) = try t.ctl("vm", "migrate", "vmo-cancel", "--to", to, "--bandwidth", "8", "--budget", "600")
        #expect(rc == 0, "\(out)")
        _ = try eventuallySync(timeout: 60) { try t.migration("vmo-cancel").state == "running" ? true : nil }
        _ = try eventuallySync(timeout: 60) { (try t.migration("vmo-cancel").progress?.transferredMiB ?? 0) > 1 ? true : nil }
        (rc, out) = try t.ctl("migration", "cancel", "vmo-cancel")
        #expect(rc == 0, "\(out)")
        let cancelled = try eventuallySync(timeout: 60) { () -> MigrationView? in
            let m = try t.migration("vmo-cancel")
            return m.isFinished ? m : nil
        }
        #expect(cancelled.state == "cancelled", "\(cancelled)")
        #expect(try t.domains(from, running: true).contains("vmo-cancel"))
        #expect(try !t.domains(to).contains("vmo-cancel"))
        #expect(try t.vm("vmo-cancel").host == from)

        // The destination's QEMU dies in the middle.
        (rc, out) = try t.ctl("vm", "migrate", "vmo-cancel", "--to", to, "--bandwidth", "8", "--budget", "600")
        #expect(rc == 0, "\(out)")
        _ = try eventuallySync(timeout: 60) { (try t.migration("vmo-cancel").progress?.transferredMiB ?? 0) > 1 ? true : nil }
        let (prc, pidText) = try Testbed.run(["bash", Testbed.script, "exec", to, "cat", "/run/libvirt/qemu/vmo-cancel.pid"])
        #expect(prc == 0, "\(pidText)")
        let pid = try #require(pid_t(pidText.trimmingCharacters(in: .whitespacesAndNewlines)), "\(pidText)")
        try #require(pid > 1)
        #expect(kill(pid, SIGKILL) == 0)
        let failed = try eventuallySync(timeout: 90) { () -> MigrationView? in
            let m = try t.migration("vmo-cancel")
            return m.isFinished ? m : nil
        }
        #expect(failed.state == "failed", "\(failed)")
        #expect(try t.domains(from, running: true).contains("vmo-cancel"), "the VM keeps running on the source")
        #expect(try t.vm("vmo-cancel").host == from)
        #expect(try t.vm("vmo-cancel").state == "running")
    }

    /// kill -9 of the controller mid-migration: after the restart the migration is followed to its end
    /// and exactly one running copy exists, where the controller says.
    @Test func controllerKilledMidMigration() throws {
        try t.apply("vmo-restart", hosts: ["h1", "h2"])
        defer { try? t.delete("vmo-restart") }
        let from = try #require(try t.vm("vmo-restart").host)
        let to = t.other(from)
        // About 90 MiB at 4 MiB/s: over 20 s, time enough to kill and restart the controller.
        var (rc, out) = try t.ctl("vm", "migrate", "vmo-restart", "--to", to, "--bandwidth", "4")
        #expect(rc == 0, "\(out)")
        _ = try eventuallySync(timeout: 60) { try t.migration("vmo-restart").state == "running" ? true : nil }
        (rc, out) = try Testbed.run(["bash", Testbed.script, "restart-controller", "--kill"])
        #expect(rc == 0, "\(out)")
        // The restarted controller finds it still under way, and follows it.
        let resumed = try t.migration("vmo-restart")
        #expect(resumed.state == "running", "\(resumed)")
        let done = try eventuallySync(timeout: 180) { () -> MigrationView? in
            let m = try t.migration("vmo-restart")
            return m.isFinished ? m : nil
        }
        #expect(done.state == "completed", "\(done)")
        let running = try t.domains("h1", running: true).filter { $0 == "vmo-restart" }.count
            + t.domains("h2", running: true).filter { $0 == "vmo-restart" }.count
        #expect(running == 1, "exactly one running copy")
        #expect(try t.domains(to, running: true).contains("vmo-restart"))
        #expect(try t.vm("vmo-restart").host == to)
    }

    /// kill -9 of the source's agent mid-migration: the restarted agent aborts the migration nobody
    /// follows any more (no policy, no budget would bound it); the guest runs on, once, on the source,
    /// and the controller records the failure and where the VM is.
    @Test func sourceAgentKilledMidMigration() throws {
        try t.apply("vmo-agent", hosts: ["h1", "h2"])
        defer { try? t.delete("vmo-agent") }
        let from = try #require(try t.vm("vmo-agent").host)
        let to = t.other(from)
        var (rc, out) = try t.ctl("vm", "migrate", "vmo-agent", "--to", to, "--bandwidth", "4")
        #expect(rc == 0, "\(out)")
        _ = try eventuallySync(timeout: 60) { (try t.migration("vmo-agent").progress?.transferredMiB ?? 0) > 1 ? true : nil }
        (rc, out) = try Testbed.run(["bash", Testbed.script, "restart-agent", from, "--kill"])
        #expect(rc == 0, "\(out)")
        let ended = try eventuallySync(timeout: 120) { () -> MigrationView? in
            let m = try t.migration("vmo-agent")
            return m.isFinished ? m : nil
        }
        #expect(ended.state == "failed", "\(ended)")
        _ = try eventuallySync(timeout: 60) { try t.domains(to).contains("vmo-agent") ? nil : true }
        #expect(try t.domains(from, running: true).contains("vmo-agent"), "runs on at the source")
        #expect(try t.vm("vmo-agent").host == from)
    }

    /// Refusals name their reason and change nothing.
    @Test func refusals() throws {
        var (rc, out) = try t.ctl("vm", "migrate", "nosuchvm", "--to", "h2")
        #expect(rc == 3, "\(out)")
        (rc, out) = try t.ctl("vm", "migrate", "vmo-x", "--to", "h2", "--policy", "yolo")
        #expect(rc == 2, "\(out)")
        #expect(out.contains("--policy"))
        try t.apply("vmo-pinned", hosts: ["h1"])
        defer { try? t.delete("vmo-pinned") }
        (rc, out) = try t.ctl("vm", "migrate", "vmo-pinned", "--to", "h2")
        #expect(rc == 1, "\(out)")
        #expect(out.contains("hosts: not one of the VM's hosts"), "\(out)")
        (rc, out) = try t.ctl("vm", "migrate", "vmo-pinned", "--to", "h9")
        #expect(rc == 2, "\(out)")
        #expect(out.contains("to: no host h9"), "\(out)")
    }
}

}

/// Across sites: a VM with a local disk moves to the other site over the WAN (delay and rate cap);
/// its network is found by name there.
extension ClusterOnTestbed {
@Suite(.serialized, .enabled(if: Testbed.available && Testbed.sites == 2 && !Testbed.ctlBinary.isEmpty, "needs the two-site testbed"))
struct VMotionAcrossSites {
    let t = VMotionHelpers()

    @Test func localDiskToTheOtherSite() throws {
        let disk = try t.localDisk("vmo-wan")
        try t.apply("vmo-wan", hosts: ["h1"], disk: disk)
        defer { try? t.delete("vmo-wan"); t.removeLocalDisk(disk) }
        try t.apply("vmo-wan", hosts: ["h1", "h2"], disk: disk)
        #expect(try t.vm("vmo-wan").host == "h1")
        let (rc, m) = try t.migrate("vmo-wan", to: "h2")
        let done = try #require(m)
        #expect(rc == 0, "\(done)")
        #expect(done.storage == "copy-incremental")
        #expect((done.totalMs ?? 0) > 0, "\(done)")
        #expect(try t.domains("h2", running: true).contains("vmo-wan"))
        #expect(try t.vm("vmo-wan").host == "h2")
    }
}
}
