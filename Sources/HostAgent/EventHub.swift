import AgentAPI
import FoundationEssentials
import Synchronization

/// Fans the agent's events out to every stream subscriber, numbering them, and keeps the most recent
/// ones so that a client that reconnects with `since` (or Last-Event-ID) misses nothing still held.
///
/// Numbers grow across restarts of the agent: they start at the start time in milliseconds × 1000,
/// above any number the previous process gave (unless it averaged 1000 events a millisecond). A
/// client that reconnects to a restarted agent with the last number it saw gets every new event; with
/// numbers starting at 1 again it would skip them until they passed the old ones (the controller
/// missed a migration's events that way after an agent restart).
public final class EventHub: Sendable {
    struct State {
        var nextSeq: Int64
        var recent: [AgentEvent] = []
        var subscribers: [Int: AsyncStream<AgentEvent?>.Continuation] = [:]
        var nextID = 0
        var closed = false
    }

    private let state: Mutex<State>
    private let keep: Int

    public init(keep: Int = 2048, firstSeq: Int64 = Int64(Date().timeIntervalSince1970 * 1000) * 1000) {
        self.keep = keep
        state = Mutex(State(nextSeq: max(1, firstSeq)))
    }

    @discardableResult
    public func publish(
        kind: String, domain: String? = nil, uuid: String? = nil, event: String? = nil, detail: String? = nil,
        info: [String: String] = [:]
    ) -> AgentEvent {
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        return state.withLock { s in
            let e = AgentEvent(seq: s.nextSeq, timeMs: now, kind: kind, domain: domain, uuid: uuid, event: event, detail: detail, info: info)
            s.nextSeq += 1
            s.recent.append(e)
            if s.recent.count > keep { s.recent.removeFirst(s.recent.count - keep) }
            for c in s.subscribers.values { c.yield(e) }
            return e
        }
    }

    /// Events after `since` still held, then every new one, with no gap between the two; and, with a
    /// `heartbeat`, a nil at that interval, in the same stream (a quiet stream's keepalive: a client that
    /// went away is only noticed on a write). At most 8192 wait; a slow reader loses the oldest.
    public func subscribe(since: Int64?, heartbeat: Duration? = nil) -> AsyncStream<AgentEvent?> {
        let (stream, continuation) = AsyncStream<AgentEvent?>.makeStream(bufferingPolicy: .bufferingNewest(8192))
        let id: Int? = state.withLock { s in
            if let since { for e in s.recent where e.seq > since { continuation.yield(e) } }
            if s.closed { return nil }
            let id = s.nextID
            s.nextID += 1
            s.subscribers[id] = continuation
            return id
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        let ticker = heartbeat.map { interval in
            Task {
                while (try? await Task.sleep(for: interval)) != nil {
                    if case .terminated = continuation.yield(nil) { return }
                }
            }
        }
        continuation.onTermination = { [weak self] _ in
            ticker?.cancel()
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    public func recent(since: Int64) -> [AgentEvent] {
        state.withLock { s in s.recent.filter { $0.seq > since } }
    }

    public var lastSeq: Int64 { state.withLock { $0.nextSeq - 1 } }

    /// Ends every stream (graceful shutdown).
    public func closeAll() {
        let subs = state.withLock { s in
            s.closed = true
            defer { s.subscribers = [:] }
            return Array(s.subscribers.values)
        }
        for c in subs { c.finish() }
    }
}
