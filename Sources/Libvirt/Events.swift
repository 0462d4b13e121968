import CLibvirt
import FoundationEssentials
import NIOConcurrencyHelpers

/// A libvirt domain event, decoded from the C callback's arguments.
public struct DomainEvent: Sendable, Equatable, Codable {
    /// `lifecycle`, `reboot`, `watchdog`, `ioError`, `blockJob`, `controlError`, `migrationIteration`.
    public var kind: String
    public var domain: String
    public var uuid: String
    /// For lifecycle: defined, undefined, started, suspended, resumed, stopped, shutdown, pmsuspended, crashed.
    public var event: String?
    /// The event's detail, e.g. stopped/destroyed, started/booted.
    public var detail: String?
    public var info: [String: String]

    public init(kind: String, domain: String, uuid: String, event: String? = nil, detail: String? = nil, info: [String: String] = [:]) {
        self.kind = kind
        self.domain = domain
        self.uuid = uuid
        self.event = event
        self.detail = detail
        self.info = info
    }
}

final class EventSink {
    let handler: @Sendable (DomainEvent) -> Void
    init(_ handler: @escaping @Sendable (DomainEvent) -> Void) { self.handler = handler }

    static func from(_ opaque: UnsafeMutableRawPointer?) -> EventSink? {
        opaque.map { Unmanaged<EventSink>.fromOpaque($0).takeUnretainedValue() }
    }
}

/// Registered domain-event callbacks; deregistered on `cancel()` or release.
public final class EventRegistration: @unchecked Sendable {
    private let connection: Connection
    private var ids: [Int32]
    private let lock = NIOLock()

    init(connection: Connection, ids: [Int32]) {
        self.connection = connection
        self.ids = ids
    }

    public func cancel() {
        lock.lock()
        let current = ids
        ids = []
        lock.unlock()
        for id in current { _ = virConnectDomainEventDeregisterAny(connection.ptr, id) }
    }

    deinit { cancel() }
}

extension Connection {
    /// Registers for every domain's lifecycle, reboot, watchdog, I/O error, block job, control error,
    /// migration iteration and graphics (console connection) events. `handler` runs on libvirt's event thread: keep it short.
    public func subscribeDomainEvents(_ handler: @escaping @Sendable (DomainEvent) -> Void) throws(LibvirtError) -> EventRegistration {
        Libvirt.initialize()
        var ids: [Int32] = []
        let callbacks: [(Int32, virConnectDomainEventGenericCallback)] = [
            (Int32(VIR_DOMAIN_EVENT_ID_LIFECYCLE.rawValue), unsafeBitCast(lifecycleCallback, to: virConnectDomainEventGenericCallback.self)),
            (Int32(VIR_DOMAIN_EVENT_ID_REBOOT.rawValue), genericCallback(kind: .reboot)),
            (Int32(VIR_DOMAIN_EVENT_ID_WATCHDOG.rawValue), unsafeBitCast(watchdogCallback, to: virConnectDomainEventGenericCallback.self)),
            (Int32(VIR_DOMAIN_EVENT_ID_IO_ERROR.rawValue), unsafeBitCast(ioErrorCallback, to: virConnectDomainEventGenericCallback.self)),
            (Int32(VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2.rawValue), unsafeBitCast(blockJobCallback, to: virConnectDomainEventGenericCallback.self)),
            (Int32(VIR_DOMAIN_EVENT_ID_CONTROL_ERROR.rawValue), genericCallback(kind: .controlError)),
            (Int32(VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION.rawValue), unsafeBitCast(migrationIterationCallback, to: virConnectDomainEventGenericCallback.self)),
            (Int32(VIR_DOMAIN_EVENT_ID_GRAPHICS.rawValue), unsafeBitCast(graphicsCallback, to: virConnectDomainEventGenericCallback.self)),
        ]
        for (eventID, callback) in callbacks {
            let sink = Unmanaged.passRetained(EventSink(handler))
            let id = virConnectDomainEventRegisterAny(ptr, nil, eventID, callback, sink.toOpaque()) { opaque in
                if let opaque { Unmanaged<EventSink>.fromOpaque(opaque).release() }
            }
            if id < 0 {
                let error = LibvirtError.last("cannot register domain events")
                sink.release()
                for done in ids { _ = virConnectDomainEventDeregisterAny(ptr, done) }
                throw error
            }
            ids.append(id)
        }
        return EventRegistration(connection: self, ids: ids)
    }
}

private enum GenericKind { case reboot, controlError }

private func genericCallback(kind: GenericKind) -> virConnectDomainEventGenericCallback {
    switch kind {
    case .reboot:
        return { _, dom, opaque in
            guard let dom, let sink = EventSink.from(opaque) else { return }
            sink.handler(DomainEvent(kind: "reboot", domain: domainName(dom), uuid: domainUUID(dom)))
        }
    case .controlError:
        return { _, dom, opaque in
            guard let dom, let sink = EventSink.from(opaque) else { return }
            sink.handler(DomainEvent(kind: "controlError", domain: domainName(dom), uuid: domainUUID(dom)))
        }
    }
}

private func domainName(_ dom: OpaquePointer) -> String { String(cString: virDomainGetName(dom)) }

private func domainUUID(_ dom: OpaquePointer) -> String {
    var buf = [CChar](repeating: 0, count: Int(VIR_UUID_STRING_BUFLEN))
    _ = virDomainGetUUIDString(dom, &buf)
    return String(cString: buf)
}

private let lifecycleCallback: virConnectDomainEventCallback = { _, dom, event, detail, opaque in
    guard let dom, let sink = EventSink.from(opaque) else { return 0 }
    let (e, d) = lifecycleNames(event: event, detail: detail)
    sink.handler(DomainEvent(kind: "lifecycle", domain: domainName(dom), uuid: domainUUID(dom), event: e, detail: d))
    return 0
}

private let watchdogCallback: virConnectDomainEventWatchdogCallback = { _, dom, action, opaque in
    guard let dom, let sink = EventSink.from(opaque) else { return }
    let actions = ["none", "pause", "reset", "poweroff", "shutdown", "debug", "inject-nmi"]
    let a = action >= 0 && Int(action) < actions.count ? actions[Int(action)] : String(action)
    sink.handler(DomainEvent(kind: "watchdog", domain: domainName(dom), uuid: domainUUID(dom), detail: a))
}

private let ioErrorCallback: virConnectDomainEventIOErrorCallback = { _, dom, path, alias, action, opaque in
    guard let dom, let sink = EventSink.from(opaque) else { return }
    let actions = ["none", "pause", "report"]
    let a = action >= 0 && Int(action) < actions.count ? actions[Int(action)] : String(action)
    var info: [String: String] = [:]
    if let path { info["path"] = String(cString: path) }
    if let alias { info["device"] = String(cString: alias) }
    sink.handler(DomainEvent(kind: "ioError", domain: domainName(dom), uuid: domainUUID(dom), detail: a, info: info))
}

private let blockJobCallback: virConnectDomainEventBlockJobCallback = { _, dom, disk, type, status, opaque in
    guard let dom, let sink = EventSink.from(opaque) else { return }
    let statuses = ["completed", "failed", "canceled", "ready"]
    let types = ["unknown", "pull", "copy", "commit", "active-commit", "backup"]
    var info: [String: String] = [:]
    if let disk { info["disk"] = String(cString: disk) }
    info["type"] = type >= 0 && Int(type) < types.count ? types[Int(type)] : String(type)
    let s = status >= 0 && Int(status) < statuses.count ? statuses[Int(status)] : String(status)
    sink.handler(DomainEvent(kind: "blockJob", domain: domainName(dom), uuid: domainUUID(dom), detail: s, info: info))
}

private let migrationIterationCallback: virConnectDomainEventMigrationIterationCallback = { _, dom, iteration, opaque in
    guard let dom, let sink = EventSink.from(opaque) else { return }
    sink.handler(DomainEvent(
        kind: "migrationIteration", domain: domainName(dom), uuid: domainUUID(dom), info: ["iteration": String(iteration)]))
}

/// A client connected to, authenticated on, or left a domain's graphical console (VNC, SPICE).
private let graphicsCallback: virConnectDomainEventGraphicsCallback = { _, dom, phase, local, remote, scheme, _, opaque in
    guard let dom, let sink = EventSink.from(opaque) else { return }
    let phases = ["connect", "initialize", "disconnect"]
    let p = phase >= 0 && Int(phase) < phases.count ? phases[Int(phase)] : String(phase)
    func address(_ a: UnsafePointer<virDomainEventGraphicsAddress>?) -> String? {
        guard let a, let node = a.pointee.node else { return nil }
        return String(cString: node) + (a.pointee.service.map { ":" + String(cString: $0) } ?? "")
    }
    var info: [String: String] = [:]
    if let l = address(local) { info["local"] = l }
    if let r = address(remote) { info["remote"] = r }
    if let scheme { info["auth"] = String(cString: scheme) }
    sink.handler(DomainEvent(kind: "graphics", domain: domainName(dom), uuid: domainUUID(dom), event: p, detail: info["remote"], info: info))
}

/// libvirt's lifecycle event and detail numbers as names (virDomainEventType and its detail enums).
func lifecycleNames(event: Int32, detail: Int32) -> (String, String) {
    let events = ["defined", "undefined", "started", "suspended", "resumed", "stopped", "shutdown", "pmsuspended", "crashed"]
    let details: [[String]] = [
        ["added", "updated", "renamed", "from-snapshot"],
        ["removed", "renamed"],
        ["booted", "migrated", "restored", "from-snapshot", "wakeup"],
        ["paused", "migrated", "ioerror", "watchdog", "restored", "from-snapshot", "api-error", "postcopy", "postcopy-failed"],
        ["unpaused", "migrated", "from-snapshot", "postcopy", "postcopy-failed"],
        ["shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from-snapshot"],
        ["finished", "guest", "host"],
        ["memory", "disk"],
        ["panicked", "crashloaded"],
    ]
    guard event >= 0, Int(event) < events.count else { return (String(event), String(detail)) }
    let names = details[Int(event)]
    let d = detail >= 0 && Int(detail) < names.count ? names[Int(detail)] : String(detail)
    return (events[Int(event)], d)
}
