import ClusterModel
@testable import DomainXML
import Foundation
import Testing
import TestSupport

@Suite struct DomainXMLRoundTrip {
    static let options = DomainOptions(type: .qemu, hostCoreMHz: 2000, hardLimitInDefinition: true, consoleLogPath: "/var/log/libvirt/qemu/web1.console.log")

    static func fullSpec() -> VMSpec {
        VMSpec(
            name: "web1", uuid: "6f1c1a2e-6a0e-4c2b-9d1e-2b7c9c0f8a11", cpus: 4, memoryMiB: 512,
            topology: .init(sockets: 2, cores: 2, threads: 1), machine: "q35", cpuModel: "Haswell",
            boot: .init(kernel: "/srv/guest/vmlinuz", initrd: "/srv/guest/initrd.img", cmdline: "console=ttyS0 vs.ip=10.0.0.5/24"),
            disks: [.init(path: "/var/lib/vsphere/pools/local/web1.qcow2", format: "qcow2"), .init(path: "/srv/data.raw", format: "raw", readonly: true)],
            nics: [.init(bridge: "vsbr1", mac: "52:54:00:aa:bb:01", model: "virtio"), .init(network: "default", model: "e1000")],
            resources: .init(
                cpu: .init(reservationMHz: 500, shares: .high, limitMHz: 3000),
                memory: .init(reservationMiB: 256, shares: .normal, limitMiB: 400)),
            resourcePool: "gold")
    }

    @Test func everyFieldSurvivesTheRoundTrip() throws {
        let spec = Self.fullSpec()
        let def = try DomainXML.parse(DomainXML.build(spec, options: Self.options))
        #expect(def.type == "qemu")
        #expect(def.name == "web1")
        #expect(def.uuid == spec.uuid)
        #expect(def.vcpus == 4)
        #expect(def.memoryKiB == 512 * 1024)
        #expect(def.machine == "q35")
        #expect(def.cpuModel == "Haswell")
        #expect(def.topology == .init(sockets: 2, cores: 2, threads: 1))
        #expect(def.kernel == "/srv/guest/vmlinuz")
        #expect(def.initrd == "/srv/guest/initrd.img")
        #expect(def.cmdline == "console=ttyS0 vs.ip=10.0.0.5/24")
        #expect(def.disks == [
            .init(path: "/var/lib/vsphere/pools/local/web1.qcow2", format: "qcow2", target: "vda", readonly: false),
            .init(path: "/srv/data.raw", format: "raw", target: "vdb", readonly: true),
        ])
        #expect(def.nics == [
            .init(bridge: "vsbr1", network: nil, mac: "52:54:00:aa:bb:01", model: "virtio"),
            .init(bridge: nil, network: "default", mac: nil, model: "e1000"),
        ])
        #expect(def.consoleLogPath == "/var/log/libvirt/qemu/web1.console.log")
        #expect(def.spec == spec)
        #expect(def.tuning == HostTuning.from(spec, hostCoreMHz: 2000))
    }

    @Test func kvmAndDefaults() throws {
        let spec = VMSpec(name: "a", cpus: 2, memoryMiB: 64)
        let xml = DomainXML.build(spec, options: .init(type: .kvm, hostCoreMHz: 2400))
        let def = try DomainXML.parse(xml)
        #expect(def.type == "kvm")
        #expect(def.machine == "pc")
        #expect(def.cpuModel == "qemu64")
        #expect(def.topology == .init(sockets: 1, cores: 2, threads: 1))
        #expect(def.tuning.isEmpty)
        #expect(!xml.contains("<cputune>"))
        #expect(!xml.contains("<memtune>"))
    }

    @Test func hardLimitLeftOutWhenAppliedLive() throws {
        var o = Self.options
        o.hardLimitInDefinition = false
        let def = try DomainXML.parse(DomainXML.build(Self.fullSpec(), options: o))
        #expect(def.tuning.memoryHardLimitKiB == nil)
        #expect(def.tuning.memorySoftLimitKiB == 256 * 1024)
    }

    /// Seeded random specs: whatever the values, parse(build(spec)) gives the spec back.
    @Test(arguments: 0..<200) func randomSpecsRoundTrip(seed: Int) throws {
        var rng = SplitMix(seed: UInt64(seed))
        let cpus = Int(rng.next() % 16) + 1
        let mem = Int(rng.next() % 8192) + 16
        let shares: [Shares?] = [nil, .low, .normal, .high, .custom(Int(rng.next() % 10000) + 2)]
        let spec = VMSpec(
            name: "vm-\(seed)", cpus: cpus, memoryMiB: mem,
            boot: .init(kernel: "/k/\(rng.next())", cmdline: rng.next() % 2 == 0 ? nil : "a=\(rng.next()) <b> & 'c' \"d\""),
            disks: (0..<Int(rng.next() % 4)).map { .init(path: "/d/\($0)&<x>.img", format: $0 % 2 == 0 ? "qcow2" : "raw") },
            resources: .init(
                cpu: .init(shares: shares[Int(rng.next() % 5)], limitMHz: rng.next() % 2 == 0 ? nil : Int(rng.next() % 5000) + 100),
                memory: .init(reservationMiB: Int(rng.next() % UInt64(mem)), limitMiB: rng.next() % 2 == 0 ? nil : Int(rng.next() % UInt64(mem)) + 16)))
        let def = try DomainXML.parse(DomainXML.build(spec, options: .init(type: .qemu, hostCoreMHz: 2000)))
        #expect(def.spec == spec)
        #expect(def.vcpus == cpus)
        #expect(def.memoryKiB == mem * 1024)
        #expect(def.disks.map(\.path) == spec.disks.map { $0.path! })
        #expect(def.tuning == HostTuning.from(spec, hostCoreMHz: 2000))
    }
}

@Suite struct HostileInput {
    /// Names, paths and cmdlines that try to break out of their element stay text.
    @Test(arguments: [
        "</cmdline><devices><disk type='file'><source file='/etc/shadow'/></disk></devices><cmdline>",
        "a\" onload=\"x", "&lt;&amp;&#x41;", "]]><!--", "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>&e;",
        "ünïcödé ✓ 🚀",
    ])
    func cmdlineStaysText(_ evil: String) throws {
        let spec = VMSpec(name: "evil", cpus: 1, memoryMiB: 64, boot: .init(kernel: "/k" + evil.filter { $0 != "." }, cmdline: evil))
        let xml = DomainXML.build(spec, options: .init(type: .qemu, hostCoreMHz: 1000))
        let def = try DomainXML.parse(xml)
        #expect(def.cmdline == evil)
        #expect(def.kernel == "/k" + evil.filter { $0 != "." })
        #expect(def.disks.isEmpty)
        #expect(def.spec == spec)
    }

    @Test func diskPathCannotAddDevices() throws {
        let evil = "/x'/><disk type='block'><source dev='/dev/sda'/></disk><x a='"
        let spec = VMSpec(name: "d", cpus: 1, memoryMiB: 64, disks: [.init(path: evil)])
        let def = try DomainXML.parse(DomainXML.build(spec, options: .init(type: .qemu, hostCoreMHz: 1000)))
        #expect(def.disks.count == 1)
        #expect(def.disks[0].path == evil)
    }

    @Test func externalEntitiesAreNotExpanded() throws {
        let secret = FileManager.default.temporaryDirectory.appendingPathComponent("vs-xxe-\(getpid()).txt")
        try "SECRET-CONTENT".write(to: secret, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: secret) }
        let xml = """
            <?xml version="1.0"?><!DOCTYPE domain [<!ENTITY x SYSTEM "file://\(secret.path)">]>
            <domain type="qemu"><name>n&x;</name><vcpu>1</vcpu><memory>1024</memory></domain>
            """
        let def = try DomainXML.parse(xml)
        #expect(!def.name.contains("SECRET"))
    }

    @Test func malformedIsAnError() {
        #expect(throws: DomainXMLError.self) { try DomainXML.parse("<domain><name>x</domain>") }
        #expect(throws: DomainXMLError.self) { try DomainXML.parse("<pool/>") }
    }
}

@Suite struct ServiceLevelMapping {
    func spec(cpus: Int = 2, mem: Int = 1024, _ r: ServiceLevels) -> VMSpec {
        VMSpec(name: "s", cpus: cpus, memoryMiB: mem, resources: r)
    }

    @Test func sharesFollowVSphere() {
        #expect(HostTuning.from(spec(.init(cpu: .init(shares: .low))), hostCoreMHz: 2000).cpuShares == 1000)
        #expect(HostTuning.from(spec(.init(cpu: .init(shares: .normal))), hostCoreMHz: 2000).cpuShares == 2000)
        #expect(HostTuning.from(spec(.init(cpu: .init(shares: .high))), hostCoreMHz: 2000).cpuShares == 4000)
        #expect(HostTuning.from(spec(.init(cpu: .init(shares: .custom(777)))), hostCoreMHz: 2000).cpuShares == 777)
    }

    @Test func limitBecomesQuota() {
        // 1000 MHz on 2000 MHz cores = half a core: 50 ms per 100 ms period, for the whole VM.
        let t = HostTuning.from(spec(.init(cpu: .init(limitMHz: 1000))), hostCoreMHz: 2000)
        #expect(t.cpuPeriodMicros == 100_000)
        #expect(t.cpuQuotaMicros == 50_000)
        // A limit at or above the VM's full speed is no limit.
        #expect(HostTuning.from(spec(.init(cpu: .init(limitMHz: 4000))), hostCoreMHz: 2000).cpuQuotaMicros == nil)
        // Tiny limits are clamped to the kernel's 1 ms minimum.
        #expect(HostTuning.from(spec(.init(cpu: .init(limitMHz: 1))), hostCoreMHz: 3000).cpuQuotaMicros == 1000)
    }

    @Test func memoryLevels() {
        let t = HostTuning.from(spec(.init(memory: .init(reservationMiB: 256, limitMiB: 768))), hostCoreMHz: 2000)
        #expect(t.memoryHardLimitKiB == 768 * 1024)
        #expect(t.memorySoftLimitKiB == 256 * 1024)
        #expect(HostTuning.from(spec(.init(memory: .init(limitMiB: 1024))), hostCoreMHz: 2000).memoryHardLimitKiB == nil)
    }
}

@Suite struct Capabilities {
    @Test func numaCells() throws {
        let xml = """
            <capabilities><host><topology><cells num="2">
            <cell id="0"><memory unit="KiB">1048576</memory><cpus num="2"><cpu id="0"/><cpu id="1"/></cpus></cell>
            <cell id="1"><memory unit="KiB">2097152</memory><cpus num="1"><cpu id="2"/></cpus></cell>
            </cells></topology></host></capabilities>
            """
        let cells = try CapabilitiesXML.numaCells(xml)
        #expect(cells == [.init(id: 0, memoryKiB: 1_048_576, cpus: [0, 1]), .init(id: 1, memoryKiB: 2_097_152, cpus: [2])])
    }
}

@Suite struct StorageXMLTests {
    /// Pool and volume XML through libxml2: hostile names stay text, and what is built parses back.
    @Test func poolsAndVolumes() throws {
        let hostile = "vg<&'\"]]>x"
        let logical = StorageXML.logicalPool(name: "fast", volumeGroup: hostile)
        #expect(!logical.contains("<&") && logical.contains("type=\"logical\""))
        let parsed = try StorageXML.parsePool(logical)
        #expect(parsed.type == "logical" && parsed.path == "/dev/" + hostile)
        let rbd = StorageXML.rbdPool(name: "ceph", pool: "vms", monitors: ["10.0.0.1:6789", "[fd00::1]:3300", "mon3"], user: "libvirt", secretUUID: "0b4b5d0e-8c1e-4a52-9f0e-5d3f3c6b1a00")
        #expect(rbd.contains("name=\"10.0.0.1\" port=\"6789\"") && rbd.contains("name=\"fd00::1\" port=\"3300\"") && rbd.contains("name=\"mon3\""), "\(rbd)")
        #expect(rbd.contains("username=\"libvirt\"") && rbd.contains("uuid=\"0b4b5d0e"))
        #expect(try StorageXML.parsePool(rbd).path == nil)
        // A logical volume is a block disk, and parses back as one.
        let lv = VMSpec(name: "lv1", cpus: 1, memoryMiB: 256, disks: [.init(path: "/dev/vg0/lv1-disk0", format: "raw")])
        let lvXML = DomainXML.build(lv, options: .init(type: .qemu, hostCoreMHz: 2400))
        #expect(lvXML.contains("type=\"block\"") && lvXML.contains("dev=\"/dev/vg0/lv1-disk0\""), "\(lvXML)")
        #expect(try DomainXML.parse(lvXML).disks.first?.path == "/dev/vg0/lv1-disk0")
        #expect(DiskXML.copyDestination(path: "/dev/vg0/x", format: "raw", block: true).contains("dev=\"/dev/vg0/x\""))
        let vol = StorageXML.volume(name: "v1-disk0", capacityBytes: 1 << 30, backingPath: "/t/a&b.qcow2")
        let back = try StorageXML.parseVolume(vol)
        #expect(back.format == "qcow2" && back.backing == "/t/a&b.qcow2")
    }
}

@Suite struct NICXMLTests {
    /// A distributed-switch NIC: bridge, MAC, MTU, both directions of shaping and the anti-spoofing
    /// filter, and it parses back.
    @Test func shapedFilteredNIC() throws {
        let nic = VMSpec.NIC(network: "prod", bridge: "vsx1001", mac: "52:54:00:AB:00:01", bandwidth: .init(
            inbound: .init(averageKBps: 1000, peakKBps: 2000, burstKiB: 256), outbound: .init(averageKBps: 500)),
            filter: "clean-traffic", mtu: 1450)
        let spec = VMSpec(name: "n1", cpus: 1, memoryMiB: 64, nics: [nic])
        let xml = DomainXML.build(spec, options: .init(type: .qemu, hostCoreMHz: 2400))
        #expect(xml.contains("<source bridge=\"vsx1001\"/>") && xml.contains("<mtu size=\"1450\"/>"), "\(xml)")
        #expect(xml.contains("<inbound average=\"1000\" peak=\"2000\" burst=\"256\"/>") && xml.contains("<outbound average=\"500\"/>"), "\(xml)")
        #expect(xml.contains("<filterref filter=\"clean-traffic\"/>") && xml.contains("52:54:00:ab:00:01"))
        let back = try DomainXML.parse(xml).nics[0]
        #expect(back.bridge == "vsx1001" && back.filter == "clean-traffic" && back.mtu == 1450 && back.bandwidth == nic.bandwidth)
        // Without policy: none of the elements.
        let plain = DomainXML.build(VMSpec(name: "n2", cpus: 1, memoryMiB: 64, nics: [.init(bridge: "br0")]), options: .init(type: .qemu, hostCoreMHz: 2400))
        #expect(!plain.contains("filterref") && !plain.contains("bandwidth") && !plain.contains("<mtu"))
    }
}

@Suite struct RBDDiskXMLTests {
    /// A volume of an rbd pool attaches as a network disk through librbd: raw, monitors as hosts, the
    /// cephx key by secret; it parses back as a network disk (which migrations do not copy).
    @Test func networkDisk() throws {
        let disk = VMSpec.Disk(rbd: .init(image: "vms/db1-disk0", monitors: ["10.0.0.1:6789", "[fd00::1]:3300", "mon3"], user: "libvirt",
                                          secretUUID: "0b4b5d0e-8c1e-4a52-9f0e-5d3f3c6b1a00"))
        let spec = VMSpec(name: "db1", cpus: 1, memoryMiB: 256, disks: [disk])
        #expect(spec.validate().isEmpty, "\(spec.validate())")
        let xml = DomainXML.build(spec, options: .init(type: .qemu, hostCoreMHz: 2400))
        #expect(xml.contains("<disk type=\"network\" device=\"disk\">") && xml.contains("protocol=\"rbd\" name=\"vms/db1-disk0\""), "\(xml)")
        #expect(xml.contains("<host name=\"10.0.0.1\" port=\"6789\"/>") && xml.contains("<host name=\"fd00::1\" port=\"3300\"/>") && xml.contains("<host name=\"mon3\"/>"), "\(xml)")
        #expect(xml.contains("<auth username=\"libvirt\">") && xml.contains("<secret type=\"ceph\" uuid=\"0b4b5d0e-8c1e-4a52-9f0e-5d3f3c6b1a00\"/>"), "\(xml)")
        #expect(xml.contains("type=\"raw\""))
        let back = try DomainXML.parse(xml).disks
        #expect(back == [.init(path: "rbd:vms/db1-disk0", format: "raw", target: "vda", readonly: false, network: true)])
        let bad = VMSpec(name: "db2", cpus: 1, memoryMiB: 256, disks: [.init(rbd: .init(image: "no-slash", monitors: ["a b"], secretUUID: "x"))])
        #expect(bad.validate().map(\.description) == [
            "disks[0].rbd.image: must be CEPHPOOL/IMAGE", "disks[0].rbd.monitors[0]: must be a host, host:port or [v6]:port",
            "disks[0].rbd.secretUUID: must be a UUID", "disks[0].rbd: cephx needs user and secretUUID together (or neither)",
        ])
        #expect(StorageXML.monitor("[fd00::2]") == ("fd00::2", nil) && StorageXML.monitor("[fd00::2]:6789") == ("fd00::2", "6789"))
    }
}
