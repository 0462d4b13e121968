import CLibvirt
import FoundationEssentials
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Process-wide libvirt setup: the quiet error handler, the default event loop implementation (needed for
/// domain events and keepalives; it must be registered before any connection opens) and the thread that
/// runs it, and the thread pool on which blocking libvirt calls run.
public enum Libvirt {
    private static let setup: Void = {
        installQuietErrorHandler()
        _ = virInitialize()
        _ = virEventRegisterDefaultImpl()
        let started = vs_start_event_thread()
        precondition(started == 0, "cannot start the libvirt event thread: errno \(started)")
    }()

    /// Blocking libvirt calls run here, never on Swift's cooperative pool.
    static let pool: NIOThreadPool = {
        let p = NIOThreadPool(numberOfThreads: 8)
        p.start()
        return p
    }()

    public static func initialize() { _ = setup }

    /// Runs a blocking libvirt call on the libvirt thread pool.
    public static func offload<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        initialize()
        return try await pool.runIfActive(body)
    }

    /// Version of the libvirt library this process links, e.g. 9.0.0.
    public static var libraryVersion: String {
        var v: UInt = 0
        _ = virGetVersion(&v, nil, nil)
        return formatVersion(v)
    }

    static func formatVersion(_ v: UInt) -> String { "\(v / 1_000_000).\(v / 1000 % 1000).\(v % 1000)" }
}

/// Why a connection closed, as libvirt reports it to the close callback.
public enum CloseReason: String, Sendable {
    case error, eof, keepalive, client
}

/// One libvirt connection. libvirt connections are thread-safe; this class owns one reference and
/// closes it when released.
public final class Connection: @unchecked Sendable {
    let ptr: OpaquePointer
    public let uri: String
    private let lock = NIOLock()
    private var closeSink: Unmanaged<CloseSink>?

    private init(ptr: OpaquePointer, uri: String) {
        self.ptr = ptr
        self.uri = uri
    }

    deinit {
        if closeSink != nil {
            _ = virConnectUnregisterCloseCallback(ptr, closeTrampoline)
        }
        virConnectClose(ptr)
    }

    /// Opens a connection (blocking). `qemu:///system`, `qemu+tcp://ADDR/system`, `qemu+tls://...`,
    /// `test:///default`.
    public static func open(_ uri: String, readOnly: Bool = false) throws(LibvirtError) -> Connection {
        Libvirt.initialize()
        let flags = readOnly ? UInt32(VIR_CONNECT_RO.rawValue) : 0
        guard let ptr = vs_connect_open(uri, flags) else {
            throw LibvirtError.last("cannot connect to \(uri)")
        }
        return Connection(ptr: ptr, uri: uri)
    }

    /// Opens a connection on the libvirt thread pool.
    public static func open(_ uri: String, readOnly: Bool = false) async throws -> Connection {
        try await Libvirt.offload { try Connection.open(uri, readOnly: readOnly) }
    }

    /// Runs blocking calls on this connection off the cooperative pool.
    public func run<T: Sendable>(_ body: @escaping @Sendable (Connection) throws -> T) async throws -> T {
        try await Libvirt.offload { try body(self) }
    }

    /// Sends keepalive probes every `interval` seconds; the connection is declared dead after `count`
    /// unanswered probes (needs the event loop, which `Libvirt.initialize` runs).
    public func setKeepAlive(interval: Int32 = 5, count: UInt32 = 3) throws(LibvirtError) {
        if virConnectSetKeepAlive(ptr, interval, count) < 0 { throw LibvirtError.last("cannot set keepalive") }
    }

    /// Calls `handler` once when the connection closes for any reason other than our own close.
    public func onClose(_ handler: @escaping @Sendable (CloseReason) -> Void) throws(LibvirtError) {
        lock.lock()
        defer { lock.unlock() }
        let sink = Unmanaged.passRetained(CloseSink(handler))
        if virConnectRegisterCloseCallback(ptr, closeTrampoline, sink.toOpaque(), { opaque in
            if let opaque { Unmanaged<CloseSink>.fromOpaque(opaque).release() }
        }) < 0 {
            sink.release()
            throw LibvirtError.last("cannot register close callback")
        }
        closeSink = sink
    }

    public var isAlive: Bool { virConnectIsAlive(ptr) == 1 }

    // MARK: Host

    public func hostname() throws(LibvirtError) -> String {
        guard let s = virConnectGetHostname(ptr) else { throw LibvirtError.last("cannot get hostname") }
        defer { free(s) }
        return String(cString: s)
    }

    /// The libvirt version of the daemon at the other end.
    public func libvirtVersion() throws(LibvirtError) -> String {
        var v: UInt = 0
        if virConnectGetLibVersion(ptr, &v) < 0 { throw LibvirtError.last("cannot get libvirt version") }
        return Libvirt.formatVersion(v)
    }

    /// The hypervisor's version (QEMU's for the QEMU driver).
    public func hypervisorVersion() throws(LibvirtError) -> String {
        var v: UInt = 0
        if virConnectGetVersion(ptr, &v) < 0 { throw LibvirtError.last("cannot get hypervisor version") }
        return Libvirt.formatVersion(v)
    }

    public func capabilitiesXML() throws(LibvirtError) -> String {
        guard let s = virConnectGetCapabilities(ptr) else { throw LibvirtError.last("cannot get capabilities") }
        defer { free(s) }
        return String(cString: s)
    }

    public func nodeInfo() throws(LibvirtError) -> NodeInfo {
        var info = virNodeInfo()
        if virNodeGetInfo(ptr, &info) < 0 { throw LibvirtError.last("cannot get node info") }
        let model = withUnsafeBytes(of: info.model) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        return NodeInfo(
            model: model, memoryKiB: UInt64(info.memory), cpus: Int(info.cpus), mhz: Int(info.mhz),
            numaNodes: Int(info.nodes), sockets: Int(info.sockets), cores: Int(info.cores), threads: Int(info.threads))
    }

    /// Free host memory in bytes.
    public func freeMemory() throws(LibvirtError) -> UInt64 {
        let free = virNodeGetFreeMemory(ptr)
        if free == 0 {
            let e = LibvirtError.last("")
            if !e.message.isEmpty { throw e }
        }
        return UInt64(free)
    }

    // MARK: Domains

    public func defineDomain(xml: String) throws(LibvirtError) -> Domain {
        guard let d = virDomainDefineXML(ptr, xml) else { throw LibvirtError.last("cannot define domain") }
        return Domain(d)
    }

    public func domain(named name: String) throws(LibvirtError) -> Domain {
        guard let d = virDomainLookupByName(ptr, name) else { throw LibvirtError.last("domain \(name) not found") }
        return Domain(d)
    }

    public func domain(uuid: String) throws(LibvirtError) -> Domain {
        guard let d = virDomainLookupByUUIDString(ptr, uuid) else { throw LibvirtError.last("domain \(uuid) not found") }
        return Domain(d)
    }

    public func domains() throws(LibvirtError) -> [Domain] {
        var list: UnsafeMutablePointer<OpaquePointer?>?
        let n = virConnectListAllDomains(ptr, &list, 0)
        if n < 0 { throw LibvirtError.last("cannot list domains") }
        defer { free(list) }
        return (0..<Int(n)).compactMap { list?[$0].map(Domain.init) }
    }

    /// Every statistic of every domain in one call (`virConnectGetAllDomainStats`), by domain name.
    public func allDomainStats() throws(LibvirtError) -> [String: [String: TypedValue]] {
        var records: UnsafeMutablePointer<virDomainStatsRecordPtr?>?
        let n = virConnectGetAllDomainStats(ptr, 0, &records, 0)
        if n < 0 { throw LibvirtError.last("cannot get domain stats") }
        defer { virDomainStatsRecordListFree(records) }
        var out: [String: [String: TypedValue]] = [:]
        for i in 0..<Int(n) {
            guard let rec = records?[i] else { continue }
            let name = String(cString: virDomainGetName(rec.pointee.dom))
            out[name] = TypedValue.decode(rec.pointee.params, count: rec.pointee.nparams)
        }
        return out
    }

    // MARK: Storage

    public func defineStoragePool(xml: String) throws(LibvirtError) -> StoragePool {
        guard let p = virStoragePoolDefineXML(ptr, xml, 0) else { throw LibvirtError.last("cannot define storage pool") }
        return StoragePool(p)
    }

    public func storageVolume(path: String) throws(LibvirtError) -> StorageVolume {
        guard let v = virStorageVolLookupByPath(ptr, path) else { throw LibvirtError.last("no storage volume at \(path)") }
        return StorageVolume(v)
    }

    public func storagePool(named name: String) throws(LibvirtError) -> StoragePool {
        guard let p = virStoragePoolLookupByName(ptr, name) else { throw LibvirtError.last("storage pool \(name) not found") }
        return StoragePool(p)
    }

    public func storagePools() throws(LibvirtError) -> [StoragePool] {
        var list: UnsafeMutablePointer<OpaquePointer?>?
        let n = virConnectListAllStoragePools(ptr, &list, 0)
        if n < 0 { throw LibvirtError.last("cannot list storage pools") }
        defer { free(list) }
        return (0..<Int(n)).compactMap { list?[$0].map(StoragePool.init) }
    }

    // MARK: Networks

    public func defineNetwork(xml: String) throws(LibvirtError) -> Network {
        guard let p = virNetworkDefineXML(ptr, xml) else { throw LibvirtError.last("cannot define network") }
        return Network(p)
    }

    public func network(named name: String) throws(LibvirtError) -> Network {
        guard let p = virNetworkLookupByName(ptr, name) else { throw LibvirtError.last("network \(name) not found") }
        return Network(p)
    }

    public func networks() throws(LibvirtError) -> [Network] {
        var list: UnsafeMutablePointer<OpaquePointer?>?
        let n = virConnectListAllNetworks(ptr, &list, 0)
        if n < 0 { throw LibvirtError.last("cannot list networks") }
        defer { free(list) }
        return (0..<Int(n)).compactMap { list?[$0].map(Network.init) }
    }
}

public struct NodeInfo: Sendable, Equatable, Codable {
    public var model: String
    public var memoryKiB: UInt64
    public var cpus: Int
    public var mhz: Int
    public var numaNodes: Int
    public var sockets: Int
    public var cores: Int
    public var threads: Int
}

final class CloseSink {
    let handler: @Sendable (CloseReason) -> Void
    init(_ handler: @escaping @Sendable (CloseReason) -> Void) { self.handler = handler }
}

private let closeTrampoline: virConnectCloseFunc = { _, reason, opaque in
    guard let opaque else { return }
    let sink = Unmanaged<CloseSink>.fromOpaque(opaque).takeUnretainedValue()
    let r: CloseReason
    switch reason {
    case Int32(VIR_CONNECT_CLOSE_REASON_EOF.rawValue): r = .eof
    case Int32(VIR_CONNECT_CLOSE_REASON_KEEPALIVE.rawValue): r = .keepalive
    case Int32(VIR_CONNECT_CLOSE_REASON_CLIENT.rawValue): r = .client
    default: r = .error
    }
    sink.handler(r)
}
