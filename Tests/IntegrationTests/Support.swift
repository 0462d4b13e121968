import AgentAPI
import AsyncHTTPClient
import Foundation
import Spawn
import NIOCore
import NIOHTTP1
import NIOFoundationCompat
import NIOSSL
import Synchronization
import Testing

/// The testbed that `scripts/testbed.sh up` made (make test brings it up and down around the suite).
struct Testbed {
    static let dir = ProcessInfo.processInfo.environment["VSPHERE_TESTBED"] ?? ""
    static var available: Bool { !dir.isEmpty && FileManager.default.fileExists(atPath: dir + "/hosts") }
    static let guestDir = ProcessInfo.processInfo.environment["VSPHERE_GUEST_DIR"] ?? ""
    static let script = ProcessInfo.processInfo.environment["VSPHERE_TESTBED_SCRIPT"] ?? "scripts/testbed.sh"
    static let agentBinary = ProcessInfo.processInfo.environment["VSPHERE_AGENT_BIN"] ?? ""
    static let ctlBinary = ProcessInfo.processInfo.environment["VSPHERE_CTL_BIN"] ?? ""
    /// The controller binary (for `vsphere-controller issue`): VSPHERE_CONTROLLER_BIN, else beside the agent's.
    static var controllerBinary: String {
        ProcessInfo.processInfo.environment["VSPHERE_CONTROLLER_BIN"]
            ?? (agentBinary.isEmpty ? "" : URL(fileURLWithPath: agentBinary).deletingLastPathComponent().appendingPathComponent("vsphere-controller").path)
    }
    /// How many hosts the testbed has.
    static var hostCount: Int {
        ((try? String(contentsOfFile: dir + "/hosts", encoding: .utf8)) ?? "").split(separator: "\n").filter { !$0.isEmpty }.count
    }
    static var sites: Int {
        Int((try? String(contentsOfFile: dir + "/sites", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 1
    }

    static func address(_ host: String) throws -> String {
        try String(contentsOfFile: "\(dir)/\(host)/address", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The cluster CA and the testbed's client identity it issued (testbed.sh make_pki).
    static var clusterCA: String { "\(dir)/controller/pki/ca.crt" }
    static var clientCertificate: String { "\(dir)/client/client.crt" }
    static var clientKey: String { "\(dir)/client/client.key" }

    static func agent(_ host: String, port: Int = 7443) throws -> AgentClient {
        try AgentClient(base: "https://\(try address(host)):\(port)")
    }

    /// Starts a command in the background with its output in `log`; returns its pid (reap it with waitpid).
    static func spawn(_ args: [String], log: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        // The test runner's threads block most signals: children start clean (a daemon started from here,
        // a restarted libvirtd, agent or controller, would otherwise ignore SIGTERM).
        let rc = Spawn.withCleanAttributes { attr in posix_spawnp(&pid, args[0], &actions, &attr, argv, environ) }
        guard rc == 0 else { throw TestFailure("cannot run \(args[0]): \(String(cString: strerror(rc)))") }
        return pid
    }

    /// Runs a command and returns (status, output). posix_spawn + waitpid: Foundation's
    /// Process.waitUntilExit can hang when called from a Swift concurrency thread.
    @discardableResult
    static func run(_ args: [String]) throws -> (Int32, String) {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("vs-run-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: out) }
        let pid = try spawn(args, log: out.path)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let text = (try? String(contentsOf: out, encoding: .utf8)) ?? ""
        let exited = status & 0x7f == 0
        return (exited ? (status >> 8) & 0xff : 128 + (status & 0x7f), text)
    }

    static func ping(_ address: String) throws -> Bool {
        try run(["ping", "-c", "1", "-W", "1", address]).0 == 0
    }
}

struct HTTPResult {
    var status: Int
    var body: Data
    var text: String { String(decoding: body, as: UTF8.self) }
    func decode<T: Decodable>(_: T.Type = T.self) throws -> T { try JSONDecoder().decode(T.self, from: body) }
}

/// An HTTPS client of one agent: trusts the cluster CA and presents the testbed's client certificate
/// (mutual TLS), unless told to present another one or none.
final class AgentClient: Sendable {
    let base: String
    let client: HTTPClient

    init(base: String, ca: String = Testbed.clusterCA, clientCertificate: String? = Testbed.clientCertificate, clientKey: String? = Testbed.clientKey) throws {
        self.base = base
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca))
        if let clientCertificate, let clientKey {
            tls.certificateChain = try NIOSSLCertificate.fromPEMFile(clientCertificate).map { .certificate($0) }
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: clientKey, format: .pem))
        }
        var config = HTTPClient.Configuration(tlsConfiguration: tls)
        config.timeout = .init(connect: .seconds(5), read: .seconds(120))
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
    }

    deinit { try? client.syncShutdown() }

    func request(_ method: HTTPMethod, _ path: String, body: Data? = nil) async throws -> HTTPResult {
        var req = HTTPClientRequest(url: base + path)
        req.method = method
        if let body {
            req.body = .bytes(ByteBuffer(data: body))
            req.headers.add(name: "Content-Type", value: "application/json")
        }
        let resp = try await client.execute(req, timeout: .seconds(120))
        let bytes = try await resp.body.collect(upTo: 16 << 20)
        return HTTPResult(status: Int(resp.status.code), body: Data(buffer: bytes))
    }

    func get(_ path: String) async throws -> HTTPResult { try await request(.GET, path) }
    func post(_ path: String) async throws -> HTTPResult { try await request(.POST, path) }
    func post<T: Encodable>(_ path: String, _ value: T) async throws -> HTTPResult {
        try await request(.POST, path, body: try JSONEncoder().encode(value))
    }
    func delete(_ path: String) async throws -> HTTPResult { try await request(.DELETE, path) }
    func put<T: Encodable>(_ path: String, _ value: T) async throws -> HTTPResult {
        try await request(.PUT, path, body: try JSONEncoder().encode(value))
    }

    /// Follows the agent's SSE stream in the background, collecting events.
    func follow(since: Int64? = nil) -> EventFollower {
        let follower = EventFollower()
        let url = base + "/v1/events" + (since.map { "?since=\($0)" } ?? "")
        let client = self.client
        follower.task = Task {
            var req = HTTPClientRequest(url: url)
            req.method = .GET
            guard let resp = try? await client.execute(req, timeout: .seconds(600)) else { return }
            var pending = ""
            do {
                for try await chunk in resp.body {
                    pending += String(buffer: chunk)
                    while let r = pending.range(of: "\n\n") {
                        let block = pending[..<r.lowerBound]
                        pending = String(pending[r.upperBound...])
                        for line in block.split(separator: "\n") where line.hasPrefix("data: ") {
                            if let e = try? JSONDecoder().decode(AgentEvent.self, from: Data(line.dropFirst(6).utf8)) {
                                follower.events.withLock { $0.append(e) }
                            }
                        }
                    }
                }
            } catch {}
            follower.ended.withLock { $0 = true }
        }
        return follower
    }
}

final class EventFollower: @unchecked Sendable {
    let events = Mutex<[AgentEvent]>([])
    /// Set when the server ended the stream.
    let ended = Mutex(false)
    var task: Task<Void, Never>?

    /// Waits until an event matching `predicate` arrived.
    func waitFor(_ what: String, timeout: Duration = .seconds(60), _ predicate: (AgentEvent) -> Bool) async throws -> AgentEvent {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let e = events.withLock({ $0.first(where: predicate) }) { return e }
            try await Task.sleep(for: .milliseconds(100))
        }
        let seen = events.withLock { $0.map { "\($0.kind)/\($0.event ?? "")/\($0.detail ?? "")/\($0.domain ?? "")" } }
        throw TestFailure("no \(what) event within \(timeout); saw \(seen)")
    }

    func stop() { task?.cancel() }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Polls `body` until it returns a value or the time is up.
func eventually<T>(_ what: String, timeout: Duration = .seconds(90), every: Duration = .milliseconds(500), _ body: () async throws -> T?) async throws -> T {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if let v = try await body() { return v }
        try await Task.sleep(for: every)
    }
    throw TestFailure("timed out after \(timeout) waiting for \(what)")
}
