import ClusterModel
import DomainXML
import Foundation
import Libvirt
import Synchronization
import Testing

/// The middle tier: the wrapper against libvirt's built-in test driver (no hypervisor).
@Suite(.serialized) struct TestDriver {
    static let uri = "test:///default"

    func domainXML(_ name: String) -> String {
        // The test driver accepts only its own domain type; the rest is our converter's output.
        DomainXML.build(VMSpec(name: name, cpus: 2, memoryMiB: 128), options: .init(type: .qemu, hostCoreMHz: 2000))
            .replacingOccurrences(of: "type=\"qemu\"", with: "type=\"test\"")
    }

    @Test func hostFacts() async throws {
        let c = try await Connection.open(Self.uri)
        let node = try await c.run { try $0.nodeInfo() }
        #expect(node.cpus > 0)
        #expect(node.memoryKiB > 0)
        let caps = try await c.run { try $0.capabilitiesXML() }
        #expect(caps.contains("<capabilities>"))
        #expect(!(try await c.run { try $0.libvirtVersion() }).isEmpty)
        #expect(c.isAlive)
        #expect(Libvirt.libraryVersion.hasPrefix("9.") || Libvirt.libraryVersion.split(separator: ".").count == 3)
    }

    @Test func lifecycle() async throws {
        let c = try await Connection.open(Self.uri)
        let name = "lc-\(UInt32.random(in: 0...UInt32.max))"
        let d = try c.defineDomain(xml: domainXML(name))
        #expect(try d.state().0 == .shutoff)
        #expect(d.isPersistent())
        try d.start()
        #expect(try d.state().0 == .running)
        #expect(d.id != nil)
        // Starting a running domain is a state error, not a crash.
        #expect(throws: LibvirtError.self) { try d.start() }
        do { try d.start() } catch {
            // QEMU says operationInvalid; the test driver reports an internal error. Neither is "not found".
            #expect(error.code == .operationInvalid || error.code == .operationFailed)
            #expect(error.message.contains("running"))
        }
        try d.suspend()
        #expect(try d.state().0 == .paused)
        try d.resume()
        #expect(try d.state().0 == .running)
        try d.destroy()
        #expect(try d.state().0 == .shutoff)
        try d.start()
        try d.shutdown()
        #expect(try d.state().0 == .shutoff)
        let again = try c.domain(named: name)
        #expect(again.uuid == d.uuid)
        #expect(try DomainXML.parse(again.xml(inactive: true)).vcpus == 2)
        try d.undefine()
        do {
            _ = try c.domain(named: name)
            Issue.record("domain still defined")
        } catch {
            #expect(error.isNotFound)
        }
    }

    @Test func errorsAreCapturedPerCall() throws {
        let c = try Connection.open(Self.uri)
        do {
            _ = try c.defineDomain(xml: "<domain type='test'><name>x</name>")
            Issue.record("malformed XML was accepted")
        } catch {
            #expect(error.code == .invalid || error.code == .operationFailed)
            #expect(!error.message.isEmpty)
        }
        do {
            _ = try c.domain(named: "no-such-domain")
            Issue.record("found a domain that does not exist")
        } catch {
            #expect(error.code == .notFound)
        }
    }

    @Test func allDomainStats() async throws {
        let c = try await Connection.open(Self.uri)
        let name = "st-\(UInt32.random(in: 0...UInt32.max))"
        let d = try c.defineDomain(xml: domainXML(name))
        try d.start()
        defer { try? d.destroy(); try? d.undefine() }
        let stats = try await c.run { try $0.allDomainStats() }
        let mine = try #require(stats[name])
        #expect(mine["state.state"]?.intValue == 1)
        #expect(mine["state.reason"] != nil)
    }

    @Test func events() async throws {
        let c = try await Connection.open(Self.uri)
        let name = "ev-\(UInt32.random(in: 0...UInt32.max))"
        let (stream, continuation) = AsyncStream<DomainEvent>.makeStream()
        let registration = try c.subscribeDomainEvents { e in
            if e.domain == name { continuation.yield(e) }
        }
        defer { registration.cancel() }
        let d = try c.defineDomain(xml: domainXML(name))
        try d.start()
        try d.suspend()
        try d.resume()
        try d.destroy()
        try d.undefine()
        var seen: [String] = []
        for await e in stream {
            seen.append("\(e.event ?? "")/\(e.detail ?? "")")
            if e.event == "undefined" { break }
        }
        #expect(seen == ["defined/added", "started/booted", "suspended/paused", "resumed/unpaused", "stopped/destroyed", "undefined/removed"])
    }

    @Test func storagePoolsAndVolumes() throws {
        let c = try Connection.open(Self.uri)
        let name = "pool-\(UInt32.random(in: 0...UInt32.max))"
        let pool = try c.defineStoragePool(xml: StorageXML.dirPool(name: name, path: "/var/lib/vsphere/pools/\(name)"))
        try pool.start()
        #expect(try pool.info().active)
        #expect(try c.storagePools().contains { $0.name == name })
        let vol = try pool.createVolume(xml: StorageXML.volume(name: "disk1.qcow2", capacityBytes: 1 << 30))
        #expect(try vol.sizes().capacity == 1 << 30)
        #expect(try vol.path().hasSuffix("disk1.qcow2"))
        #expect(try pool.volumes().map(\.name) == ["disk1.qcow2"])
        try vol.delete()
        #expect(try pool.volumes().isEmpty)
        do { _ = try pool.volume(named: "disk1.qcow2"); Issue.record("volume still there") } catch { #expect(error.isNotFound) }
        try pool.stop()
        try pool.undefine()
        do { _ = try c.storagePool(named: name); Issue.record("pool still there") } catch { #expect(error.isNotFound) }
    }

    @Test func networks() throws {
        let c = try Connection.open(Self.uri)
        let name = "net-\(UInt32.random(in: 0...9999))"
        let net = try c.defineNetwork(xml: NetworkXML.isolated(name: name, bridge: "vstest\(name.suffix(4))", address: "192.0.2.1", prefix: 24))
        #expect(!net.isActive)
        try net.start()
        #expect(net.isActive)
        #expect(try net.bridgeName() == "vstest\(name.suffix(4))")
        #expect(try c.networks().contains { $0.name == name })
        try net.stop()
        try net.undefine()
        do { _ = try c.network(named: name); Issue.record("network still there") } catch { #expect(error.isNotFound) }
    }

    @Test func closeCallbackFiresOnlyForLostConnections() throws {
        // The test driver never loses its connection; registering must still work, and closing our own
        // connection must not report a loss.
        let fired = Mutex(false)
        do {
            let c = try Connection.open(Self.uri)
            try? c.onClose { _ in fired.withLock { $0 = true } }
        }
        #expect(fired.withLock { $0 } == false)
    }
}
