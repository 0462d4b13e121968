import AgentAPI
import ControllerAPI
import Foundation
import Testing

extension ClusterOnTestbed {
/// Storage pools declared once and realized on every host; VM disks as volumes in them.
@Suite(.serialized, .enabled(if: Testbed.available && !Testbed.ctlBinary.isEmpty, "needs the testbed and VSPHERE_CTL_BIN"))
struct StorageOnTestbed {
    let t = VMotionHelpers()

    func pools() throws -> [StoragePoolView] {
        let (rc, out) = try t.ctl("get", "pools", "-o", "json")
        #expect(rc == 0, "\(out)")
        return try JSONDecoder().decode([StoragePoolView].self, from: Data(out.utf8))
    }

    /// The testbed's shared pool is active on both hosts with its capacity and free bytes; libvirt has
    /// it defined, started and autostarted in each host's own libvirtd.
    @Test func sharedPoolIsOnEveryHost() throws {
        let shared = try eventuallySync(timeout: 60) { () -> StoragePoolView? in
            let p = try pools().first { $0.name == "shared" }
            return p?.hosts.count == Testbed.hostCount && p?.hosts.allSatisfy({ $0.active && $0.error == nil }) == true ? p : nil
        }
        for h in shared.hosts {
            #expect(h.capacityBytes > 0 && h.availableBytes > 0 && h.availableBytes <= h.capacityBytes, "\(h)")
        }
        let (_, info) = try Testbed.run(["bash", Testbed.script, "exec", "h2", "virsh", "-c", "qemu:///system", "pool-info", "shared"])
        #expect(info.contains("running") && info.contains("Autostart:      yes"), "\(info)")
        let (_, table) = try t.ctl("get", "pools")
        #expect(table.contains("CAPACITY") && table.contains("h1") && table.contains("h2"), "\(table)")
    }

    /// A VM whose root disk is a linked clone of the guest image, made in the shared pool by the
    /// controller: it boots from it, the volume's backing file is the template, and the volume outlives
    /// the VM (data is never deleted by omission) while the agent refuses to delete a volume in use.
    @Test func linkedCloneBootsFromItsTemplate() async throws {
        let g = Testbed.guestDir
        let name = "clone1"
        let doc = #"{"apiVersion":"vsphere/v1","kind":"Cluster","vms":[{"name":"\#(name)","cpus":1,"memoryMiB":256,"boot":{"kernel":"\#(g)/vmlinuz","initrd":"\#(g)/initrd.img","cmdline":"console=ttyS0 vs.name=\#(name) vs.root=/dev/vda"},"disks":[{"pool":"shared","from":"\#(g)/disk.qcow2"}],"nics":[{"network":"lan"}]}]}"#
        let path = "\(Testbed.dir)/\(name).json"
        try doc.write(toFile: path, atomically: true, encoding: .utf8)
        let volume = "\(Testbed.dir)/shared/\(name)-disk0"
        defer {
            try? t.delete(name)
            try? FileManager.default.removeItem(atPath: volume)
        }
        let (rc, out) = try t.ctl("apply", "-f", path, "--wait", "--timeout", "180")
        #expect(rc == 0, "\(out)")
        let host = try #require(try t.vm(name).host)
        let agent = try Testbed.agent(host)
        let console = try await eventually("boot marker", timeout: .seconds(180)) { () -> String? in
            let text = try await agent.get("/v1/vms/\(name)/console").text
            return text.contains("VSPHERE-GUEST-READY") ? text : nil
        }
        #expect(console.contains("root=disk"), "booted from the cloned root disk")

        let vols = try await agent.get("/v1/storage-pools/shared/volumes").decode([VolumeStatus].self)
        let v = try #require(vols.first { $0.name == "\(name)-disk0" })
        #expect(v.backing == g + "/disk.qcow2" && v.format == "qcow2" && v.usedBy == [name], "\(v)")
        let (_, info) = try Testbed.run(["qemu-img", "info", "-U", volume])
        #expect(info.contains("backing file: \(g)/disk.qcow2"), "\(info)")

        let (snapRC, snapOut) = try t.ctl("volume", "snapshot", "shared", "\(name)-disk0", "s1")
        #expect(snapRC != 0 && snapOut.contains("of \(name)") && snapOut.contains("running"), "no qemu-img snapshot under a running guest: \(snapOut)")
        let refused = try await agent.delete("/v1/storage-pools/shared/volumes/\(name)-disk0")
        #expect(refused.status == 409 && refused.text.contains(name), "a volume in use stays: \(refused.text)")
        try t.delete(name)
        #expect(FileManager.default.fileExists(atPath: volume), "deleting the VM keeps its volume")
        #expect(try await agent.delete("/v1/storage-pools/shared/volumes/\(name)-disk0").status == 200, "unused, it can go")
        #expect(!FileManager.default.fileExists(atPath: volume))
    }

    /// The volume commands of the CLI, through the controller to the agent serving the pool: create,
    /// snapshot, change, revert (the data comes back), resize, delete; bad names exit 2.
    @Test func volumeCommandsAndSnapshots() throws {
        let v = "cli-vol"
        let path = "\(Testbed.dir)/shared/\(v)"
        defer { _ = try? t.ctl("volume", "delete", "shared", v) }
        var (rc, out) = try t.ctl("volume", "create", "shared", v, "--size-gib", "1", "-o", "json")
        #expect(rc == 0, "\(out)")
        let made = try JSONDecoder().decode(VolumeStatus.self, from: Data(out.utf8))
        #expect(made.path == path && made.capacityBytes == 1 << 30 && made.format == "qcow2")
        func io(_ cmd: String) throws -> (Int32, String) { try Testbed.run(["qemu-io", "-f", "qcow2", "-c", cmd, path]) }
        #expect(try io("write -P 0xab 0 64k").0 == 0)
        (rc, out) = try t.ctl("volume", "snapshot", "shared", v, "before")
        #expect(rc == 0 && out.contains("before") && out.contains("disk only"), "\(out)")
        #expect(try io("write -P 0xcd 0 64k").0 == 0)
        #expect(try io("read -P 0xab 0 64k").1.contains("Pattern verification failed"), "the image changed after the snapshot")
        (rc, out) = try t.ctl("volume", "revert", "shared", v, "before")
        #expect(rc == 0, "\(out)")
        let (readRC, read) = try io("read -P 0xab 0 64k")
        #expect(readRC == 0 && !read.contains("failed"), "reverted: the snapshot's data is back: \(read)")
        (rc, out) = try t.ctl("volume", "snapshot", "shared", v, "before")
        #expect(rc != 0 && out.contains("already"), "\(out)")
        (rc, out) = try t.ctl("volume", "delete-snapshot", "shared", v, "before")
        #expect(rc == 0 && !out.contains("before"), "\(out)")
        (rc, out) = try t.ctl("volume", "resize", "shared", v, "--size-gib", "2")
        #expect(rc == 0 && out.contains("2.0 GiB"), "\(out)")
        (rc, out) = try t.ctl("volume", "list", "shared", "-o", "json")
        #expect(try JSONDecoder().decode([VolumeStatus].self, from: Data(out.utf8)).contains { $0.name == v && $0.capacityBytes == 2 << 30 })
        (rc, out) = try t.ctl("volume", "create", "shared", "bad/name", "--size-gib", "1")
        #expect(rc == 2, "\(out)")
        (rc, out) = try t.ctl("volume", "list", "nosuchpool")
        #expect(rc == 3, "\(out)")
        (rc, out) = try t.ctl("volume", "delete", "shared", v)
        #expect(rc == 0 && !FileManager.default.fileExists(atPath: path), "\(out)")
    }

    /// Volumes straight on an agent: a new one, a full copy, growth only, names and sizes checked.
    @Test func volumesOnAnAgent() async throws {
        let agent = try Testbed.agent("h1")
        let base = "/v1/storage-pools/shared/volumes"
        defer {
            Task {
                for v in ["vol-new", "vol-copy", "vol-linked"] { _ = try? await agent.delete("\(base)/\(v)") }
            }
        }
        let made = try await agent.put("\(base)/vol-new", VolumeRequest(sizeGiB: 1))
        #expect(made.status == 200, "\(made.text)")
        let again = try await agent.put("\(base)/vol-new", VolumeRequest(sizeGiB: 1))
        #expect(again.status == 200, "idempotent")
        let grown = try await agent.post("\(base)/vol-new/resize", VolumeResize(sizeGiB: 2))
        #expect(grown.status == 200, "\(grown.text)")
        #expect(try grown.decode(VolumeStatus.self).capacityBytes == 2 << 30)
        let shrunk = try await agent.post("\(base)/vol-new/resize", VolumeResize(sizeGiB: 1))
        #expect(shrunk.status == 400 && shrunk.text.contains("only grow"), "\(shrunk.text)")
        let copy = try await agent.put("\(base)/vol-copy", VolumeRequest(from: Testbed.guestDir + "/disk.qcow2", clone: "full"))
        #expect(copy.status == 200, "\(copy.text)")
        let c = try copy.decode(VolumeStatus.self)
        #expect(c.backing == nil && c.capacityBytes > 0, "a full copy stands alone: \(c)")
        // A template that refers to other files (here a linked clone, whose backing file is named in its
        // header) is refused: a forged header could name any host file.
        let linked = try await agent.put("\(base)/vol-linked", VolumeRequest(from: Testbed.guestDir + "/disk.qcow2"))
        #expect(linked.status == 200, "\(linked.text)")
        let chained = try await agent.put("\(base)/vol-chained", VolumeRequest(from: "shared/vol-linked", clone: "full"))
        #expect(chained.status == 400 && chained.text.contains("refers to other files"), "\(chained.text)")
        let outside = try await agent.put("\(base)/vol-etc", VolumeRequest(from: "/etc/hostname", clone: "full"))
        #expect(outside.status == 400 && outside.text.contains("template director"), "\(outside.text)")

        for (path, body, field) in [
            ("\(base)/..%2Fetc", VolumeRequest(sizeGiB: 1), "name"),
            ("\(base)/ok", VolumeRequest(sizeGiB: 0), "sizeGiB"),
            ("\(base)/ok", VolumeRequest(from: "relative/../x", clone: "linked"), "from"),
            ("\(base)/ok", VolumeRequest(sizeGiB: 1, format: "vmdk"), "format"),
        ] {
            let r = try await agent.put(path, body)
            #expect(r.status == 400 && r.text.contains(field), "\(path): \(r.text)")
        }
        let badPools = try await agent.put("/v1/storage-pools", StoragePoolsRequest(pools: [
            StoragePoolSetting(name: "Bad", type: "nfs"), StoragePoolSetting(name: "rel", type: "dir", path: "tmp/x"),
        ]))
        #expect(badPools.status == 400 && badPools.text.contains("pools[0].type") && badPools.text.contains("pools[1].path"), "\(badPools.text)")
    }
}
}

extension ClusterOnTestbed.StorageOnTestbed {
    /// Storage vMotion: a running guest's root disk (a linked clone in the shared pool) moves into a
    /// host-local pool while the guest keeps dirtying memory and writing its console; afterwards the
    /// domain (live and persistent) uses the copy, the copy stands alone, and the old volume is gone.
    @Test func storageVMotionKeepsTheGuestRunning() async throws {
        let g = Testbed.guestDir
        let name = "smove1"
        let local = "/var/lib/libvirt/images/vs-local"
        let doc = #"{"apiVersion":"vsphere/v1","kind":"Cluster","storagePools":[{"name":"shared","type":"shared","path":"\#(Testbed.dir)/shared"},{"name":"local","type":"dir","path":"\#(local)"}],"vms":[{"name":"\#(name)","cpus":1,"memoryMiB":256,"boot":{"kernel":"\#(g)/vmlinuz","initrd":"\#(g)/initrd.img","cmdline":"console=ttyS0 vs.name=\#(name) vs.root=/dev/vda vs.dirty=8:4"},"disks":[{"pool":"shared","from":"\#(g)/disk.qcow2"}],"nics":[{"network":"lan"}]}]}"#
        let path = "\(Testbed.dir)/\(name).json"
        try doc.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? t.delete(name) }
        let (rc, out) = try t.ctl("apply", "-f", path, "--wait", "--timeout", "180")
        #expect(rc == 0, "\(out)")
        let host = try #require(try t.vm(name).host)
        let agent = try Testbed.agent(host)
        try await t.dirtying(name, on: host)
        func passes() async throws -> Int {
            try await agent.get("/v1/vms/\(name)/console").text.components(separatedBy: "VSPHERE-GUEST-DIRTY passes=").count - 1
        }
        // The local pool is realized on the host first (the controller's next pass).
        _ = try eventuallySync(timeout: 60) { () -> Bool? in
            try pools().first { $0.name == "local" }?.hosts.first { $0.host == host }?.active == true ? true : nil
        }
        let before = try await passes()
        let (mrc, mout) = try t.ctl("vm", "move-storage", name, "--disk", "0", "--pool", "local", "-o", "json", "--timeout", "300")
        #expect(mrc == 0, "\(mout)")
        let move = try JSONDecoder().decode(DiskMoveStatus.self, from: Data(mout.utf8))
        #expect(move.state == "completed" && move.destination == "\(local)/\(name)-disk0" && move.copiedBytes > 0, "\(move)")
        #expect(try t.vm(name).state == "running")
        let after = try await eventually("the guest goes on dirtying", timeout: .seconds(120)) { () -> Int? in
            let n = try await passes()
            return n > before ? n : nil
        }
        #expect(after > before)
        let virsh = ["bash", Testbed.script, "exec", host, "virsh", "-c", "qemu:///system"]
        let live = try Testbed.run(virsh + ["domblklist", name]).1
        #expect(live.contains("\(local)/\(name)-disk0"), "\(live)")
        let persistent = try eventuallySync(timeout: 60) { () -> String? in
            let x = try Testbed.run(virsh + ["dumpxml", "--inactive", name]).1
            return x.contains("\(local)/\(name)-disk0") ? x : nil
        }
        #expect(!persistent.contains("/shared/\(name)-disk0"))
        let (_, info) = try Testbed.run(virsh + ["vol-info", "--pool", "local", "\(name)-disk0"])
        #expect(info.contains("Capacity"), "\(info)")
        let (_, chain) = try Testbed.run(["bash", Testbed.script, "exec", host, "qemu-img", "info", "-U", "\(local)/\(name)-disk0"])
        #expect(!chain.contains("backing file"), "the copy stands alone: \(chain)")
        _ = try eventuallySync(timeout: 90) { () -> Bool? in
            FileManager.default.fileExists(atPath: "\(Testbed.dir)/shared/\(name)-disk0") ? nil : true
        }
        // The new volume stays with the VM's data when the VM is deleted; clean it up by hand.
        try t.delete(name)
        _ = try Testbed.run(virsh + ["vol-delete", "--pool", "local", "\(name)-disk0"])
    }
}
