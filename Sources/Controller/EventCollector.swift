import AgentAPI
import AsyncHTTPClient
import ClusterModel
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import Synchronization

/// Follows every registered host's agent event stream (server-sent events) into the controller's
/// event log, resuming from the last sequence number after a disconnect, and pokes the reconciler
/// when a VM changes state so observed state follows at once rather than at the next tick.
public final class AgentEventCollector: Service, Sendable {
    let controller: Controller
    let loop: ReconcileLoop
    let followers = Mutex<[String: (agent: String, task: Task<Void, Never>)]>([:])

    /// Events older than this controller are not replayed (they were recorded by its predecessor, or
    /// happened while no controller ran).
    let startedMs = Int64(Date().timeIntervalSince1970 * 1000)

    public init(controller: Controller, loop: ReconcileLoop) {
        self.controller = controller
        self.loop = loop
    }

    public func run() async throws {
        await withGracefulShutdownHandler {
            while !Task.isCancelled && !self.stopping {
                await self.sync()
                try? await Task.sleep(for: .milliseconds(500))
            }
        } onGracefulShutdown: {
            self.stop()
        }
        stop()
    }

    private let stopped = Mutex(false)
    private var stopping: Bool { stopped.withLock { $0 } }

    private func stop() {
        stopped.withLock { $0 = true }
        let all = followers.withLock { f in
            defer { f = [:] }
            return Array(f.values)
        }
        for f in all { f.task.cancel() }
    }

    /// Starts a follower per registered host, stops those of hosts removed or moved.
    func sync() async {
        guard let hosts = try? await controller.store.objects(kind: "host") else { return }
        var want: [String: String] = [:]
        for h in hosts {
            if let host = Controller.decode(ClusterManifest.Host.self, h.spec), let agent = host.agent { want[host.name] = agent }
        }
        let stale = followers.withLock { f -> [Task<Void, Never>] in
            var out: [Task<Void, Never>] = []
            for (name, entry) in f where want[name] != entry.agent {
                out.append(entry.task)
                f[name] = nil
            }
            return out
        }
        for t in stale { t.cancel() }
        for (name, agent) in want {
            let exists = followers.withLock { $0[name] != nil }
            if exists || stopping { continue }
            let task = Task { await self.follow(host: name, agent: agent) }
            followers.withLock { $0[name] = (agent, task) }
        }
    }

    func follow(host: String, agent: String) async {
        // From the start of the agent's buffer, keeping what happened since this controller started:
        // a host registered a moment ago already has events (its VMs were defined meanwhile).
        var since: Int64 = 0
        while !Task.isCancelled {
            do {
                var req = HTTPClientRequest(url: agent + "/v1/events?since=\(since)")
                req.method = .GET
                let resp = try await controller.agents.http.execute(req, timeout: .hours(24 * 365))
                guard resp.status == .ok else { throw AgentClient.Failure(status: Int(resp.status.code), message: "events") }
                var pending = ""
                for try await chunk in resp.body {
                    pending += String(buffer: chunk)
                    while let r = pending.range(of: "\n\n") {
                        let block = String(pending[..<r.lowerBound])
                        pending = String(pending[r.upperBound...])
                        guard let line = block.split(separator: "\n").first(where: { $0.hasPrefix("data: ") }),
                            let event = try? JSONDecoder().decode(AgentEvent.self, from: Data(line.dropFirst(6).utf8))
                        else { continue }
                        since = event.seq
                        if event.timeMs >= startedMs { try await record(event, host: host) }
                    }
                }
            } catch {
                if Task.isCancelled { return }
                controller.logger.debug("event stream ended", metadata: ["host": "\(host)", "error": "\(error)"])
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }

    func record(_ e: AgentEvent, host: String) async throws {
        let info = e.info.isEmpty ? nil : e.info.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        try await controller.store.addEvent(source: host, kind: e.kind, name: e.domain, event: e.event, detail: e.detail, message: info, hostMs: e.timeMs)
        controller.metrics.eventLag.record(max(0, Date().timeIntervalSince1970 - Double(e.timeMs) / 1000))
        await controller.alarmFromEvent(e, host: host)
        if e.kind == "lifecycle" || e.kind == "agent" { loop.trigger() }
    }
}
