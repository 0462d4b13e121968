import FoundationEssentials
import Glibc
import Libvirt
import Logging
import ServiceLifecycle
import Synchronization

/// Keeps one live libvirt connection with its domain-event subscription: connects with backoff,
/// notices a lost connection (close callback, keepalive, failing calls) and reconnects, so the agent
/// survives libvirtd restarts. Publishes `agent` events when the connection comes and goes.
public final class LibvirtSupervisor: Service, Sendable {
    struct State {
        var connection: Connection?
        var registration: EventRegistration?
        var shuttingDown = false
        var connectedAt: Date?
        var onConnected: (@Sendable (Connection) async -> Void)?
    }

    public let uri: String
    let hub: EventHub
    let logger: Logger
    private let state = Mutex(State())

    public init(uri: String, hub: EventHub, logger: Logger) {
        self.uri = uri
        self.hub = hub
        self.logger = logger
    }

    /// The live connection, or `unavailable` while libvirtd is away.
    public func connection() throws(AgentError) -> Connection {
        guard let c = state.withLock({ $0.connection }) else {
            throw AgentError.unavailable("libvirt at \(uri) is not connected")
        }
        return c
    }

    public var isConnected: Bool { state.withLock { $0.connection != nil } }

    /// Drops `connection` if it is still the current one; the run loop reconnects.
    public func reportLost(_ connection: Connection, reason: String) {
        let dropped: EventRegistration?? = state.withLock { s in
            guard let c = s.connection, c === connection else { return .none }
            s.connection = nil
            defer { s.registration = nil }
            return .some(s.registration)
        }
        guard case .some(let registration) = dropped else { return }
        registration?.cancel()
        logger.error("libvirt connection lost", metadata: ["uri": "\(uri)", "reason": "\(reason)"])
        hub.publish(kind: "agent", event: "libvirt-disconnected", detail: reason, info: ["uri": uri])
    }

    public func run() async throws {
        await withGracefulShutdownHandler {
            await self.loop()
        } onGracefulShutdown: {
            self.state.withLock { $0.shuttingDown = true }
            self.hub.closeAll()
        }
        let registration = state.withLock { s in
            defer { s.registration = nil; s.connection = nil }
            return s.registration
        }
        registration?.cancel()
    }

    private var shuttingDown: Bool { state.withLock { $0.shuttingDown } }

    /// Runs after every (re)connection, before the agent reports itself connected.
    public func setOnConnected(_ hook: @escaping @Sendable (Connection) async -> Void) {
        state.withLock { $0.onConnected = hook }
    }

    private func loop() async {
        var delay: Duration = .milliseconds(200)
        while !shuttingDown && !Task.isCancelled {
            if let current = state.withLock({ $0.connection }) {
                if !(await isAlive(current)) { reportLost(current, reason: "keepalive") }
                try? await Task.sleep(for: .milliseconds(250))
                continue
            }
            do {
                try await connect()
                delay = .milliseconds(200)
            } catch {
                logger.debug("libvirt connect failed", metadata: ["uri": "\(uri)", "error": "\(error)"])
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(3))
            }
        }
    }

    private func isAlive(_ c: Connection) async -> Bool {
        (try? await c.run { $0.isAlive }) ?? false
    }

    private func connect() async throws {
        let conn = try await Connection.open(uri)
        let hub = self.hub
        let registration = try await conn.run { c in
            // test:/// and some local drivers have no keepalive; the close callback still works.
            try? c.setKeepAlive(interval: 3, count: 3)
            let reg = try c.subscribeDomainEvents { e in
                hub.publish(kind: e.kind, domain: e.domain, uuid: e.uuid, event: e.event, detail: e.detail, info: e.info)
            }
            return reg
        }
        try? conn.onClose { [weak self, weak conn] reason in
            guard let self, let conn else { return }
            self.reportLost(conn, reason: reason.rawValue)
        }
        state.withLock { s in
            s.connection = conn
            s.registration = registration
            s.connectedAt = Date()
        }
        logger.info("libvirt connected", metadata: ["uri": "\(uri)"])
        if let hook = state.withLock({ $0.onConnected }) { await hook(conn) }
        hub.publish(kind: "agent", event: "libvirt-connected", info: ["uri": uri])
    }
}
