import Foundation
import Logging
import Spawn
import Store
import Testing

/// The PostgreSQL server that `make test` starts for the tests (scripts/pg-test-server.sh).
let postgresURL = ProcessInfo.processInfo.environment["VSPHERE_TEST_POSTGRES"] ?? ""

/// Each test runs on SQLite and, where the test server is up, on PostgreSQL: one schema, one SQL text.
enum Backend: String, CaseIterable, Sendable {
    case sqlite, postgres

    /// A fresh, empty database of this kind.
    func fresh() async throws -> String {
        switch self {
        case .sqlite:
            return FileManager.default.temporaryDirectory.appendingPathComponent("vs-store-\(UUID().uuidString)/state.db").path
        case .postgres:
            let store = try await Store.open(postgresURL, logger: Logger(label: "test"))
            for table in ["objects", "vm_status", "host_status", "tasks", "events", "migrations", "join_tokens", "api_tokens", "audit", "alarms", "schema_migrations"] {
                try await store.backend.execute("DROP TABLE IF EXISTS \(table)", [])
            }
            try await store.close()
            return postgresURL
        }
    }

    static var available: [Backend] { postgresURL.isEmpty ? [.sqlite] : [.sqlite, .postgres] }
}

@Suite(.serialized) struct StoreBackends {
    /// Retention: finished tasks, events and closed alarms before their cut-offs go; running tasks,
    /// open alarms and anything newer stay.
    @Test(arguments: Backend.available)
    func historyIsPruned(_ backend: Backend) async throws {
        let path = try await backend.fresh()
        defer { if backend == .sqlite { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) } }
        let store = try await Store.open(path, logger: Logger(label: "test"))
        defer { Task { try? await store.close() } }
        let done = try await store.addTask(action: "define", kind: "vm", name: "a", host: "h1", reason: "test")
        try await store.finishTask(done, error: nil)
        _ = try await store.addTask(action: "start", kind: "vm", name: "a", host: "h1", reason: "still running")
        _ = try await store.addEvent(source: "test", kind: "vm", name: "a", event: "placed", detail: nil, message: nil)
        _ = try await store.raiseAlarm(key: "open", kind: "drift", name: "a", host: nil, message: "open")
        _ = try await store.raiseAlarm(key: "closed", kind: "drift", name: "a", host: nil, message: "closed")
        _ = try await store.clearAlarm(key: "closed", note: "fixed")
        let future = Int64(Date().timeIntervalSince1970 * 1000) + 60_000
        let none = try await store.prune(tasksBefore: 0, eventsBefore: 0, alarmsBefore: 0)
        #expect(none.tasks == 0 && none.events == 0 && none.alarms == 0, "nothing is older than the epoch")
        let n = try await store.prune(tasksBefore: future, eventsBefore: future, alarmsBefore: future)
        #expect(n.tasks == 1 && n.events == 1 && n.alarms == 1, "\(n)")
        #expect(try await store.tasks().map(\.state) == ["running"])
        #expect(try await store.alarms().map(\.key) == ["open"])
    }

    /// A database URL's password never reaches a log or an error.
    @Test func passwordsAreRedacted() {
        #expect(Store.redacted("postgres://vsphere:s3cr:et@db.example:5432/vsphere") == "postgres://vsphere:***@db.example:5432/vsphere")
        #expect(Store.hasPassword("postgresql://u:p@h/d") && !Store.hasPassword("postgres://u@h/d") && !Store.hasPassword("/var/lib/x:y@z/state.db"))
        #expect(Store.redacted("postgres://vsphere@db/vsphere") == "postgres://vsphere@db/vsphere")
        #expect(Store.redacted("/var/lib/vsphere/controller/state.db") == "/var/lib/vsphere/controller/state.db")
    }

    /// A join token works once, for its host, until it expires.
    @Test(arguments: Backend.available)
    func joinTokensWorkOnce(_ backend: Backend) async throws {
        let path = try await backend.fresh()
        defer { if backend == .sqlite { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) } }
        let store = try await Store.open(path, logger: Logger(label: "test"))
        defer { Task { try? await store.close() } }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        try await store.addJoinToken(digest: "d1", host: "h1", names: ["h1", "10.0.0.1"], expiresMs: now + 60_000)
        try await store.addJoinToken(digest: "d2", host: "h2", names: ["h2"], expiresMs: now - 1)
        let used = try await store.useJoinToken(digest: "d1")
        #expect(used?.host == "h1" && used?.names == ["h1", "10.0.0.1"], "the names fixed with the token")
        #expect(try await store.useJoinToken(digest: "d1") == nil, "used")
        #expect(try await store.useJoinToken(digest: "d2") == nil, "expired")
        #expect(try await store.useJoinToken(digest: "nope") == nil)
    }

    @Test(arguments: Backend.available)
    func migrationsRunOnceAndStateSurvivesReopen(_ backend: Backend) async throws {
        let path = try await backend.fresh()
        defer { if backend == .sqlite { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) } }
        let logger = Logger(label: "test")
        do {
            let store = try await Store.open(path, logger: logger)
            #expect(try await store.schemaVersion() == Migrations.all.last!.version)
            #expect(try await store.put(kind: "vm", name: "a", spec: #"{"x":1}"#))
            #expect(try await store.put(kind: "vm", name: "a", spec: #"{"x":1}"#) == false, "same spec: no change")
            #expect(try await store.put(kind: "vm", name: "a", spec: #"{"x":2}"#))
            try await store.setVMStatus(.init(name: "a", host: "h1", state: "running", uuid: "u", message: nil, generation: 2))
            let t = try await store.addTask(action: "define", kind: "vm", name: "a", host: "h1", reason: "test")
            try await store.finishTask(t, error: nil)
            try await store.addEvent(source: "test", kind: "vm", name: "a", event: "placed", detail: "h1", message: nil)
            try await store.close()
        }
        // A second open (a restarted controller) sees everything and runs no migration again.
        let store = try await Store.open(path, logger: logger)
        defer { Task { try? await store.close() } }
        #expect(try await store.schemaVersion() == Migrations.all.last!.version)
        let obj = try #require(try await store.object(kind: "vm", name: "a"))
        #expect(obj.spec == #"{"x":2}"#)
        #expect(obj.generation == 2)
        #expect(try await store.vmStatuses() == [.init(name: "a", host: "h1", state: "running", uuid: "u", message: nil, generation: 2)])
        let tasks = try await store.tasks()
        #expect(tasks.count == 1)
        #expect(tasks.first?.state == "done")
        let next = try await store.addTask(action: "start", kind: "vm", name: "a", host: "h1", reason: "test")
        #expect(next == 2, "task ids continue after a restart")
        #expect(try await store.events().map(\.event) == ["placed"])
        #expect(try await store.delete(kind: "vm", name: "a"))
        #expect(try await store.object(kind: "vm", name: "a") == nil)
        #expect(try await store.delete(kind: "vm", name: "a") == false)
    }

    @Test(arguments: Backend.available)
    func textIsStoredVerbatim(_ backend: Backend) async throws {
        let store = try await Store.open(backend == .sqlite ? ":memory:" : try await backend.fresh(), logger: Logger(label: "test"))
        let evil = #"'); DROP TABLE objects; -- ü 🚀 "quoted""#
        try await store.put(kind: "vm", name: evil, spec: evil)
        #expect(try await store.object(kind: "vm", name: evil)?.spec == evil)
        #expect(try await store.objects(kind: "vm").count == 1)
        try await store.close()
    }

    /// An observation read before a power action (or a maintenance switch) must not overwrite it.
    @Test(arguments: Backend.available)
    func observationsDoNotOverwriteNewerPowerRecords(_ backend: Backend) async throws {
        let store = try await Store.open(backend == .sqlite ? ":memory:" : try await backend.fresh(), logger: Logger(label: "test"))
        try await store.setObservedHostStatus(.init(name: "h1", state: "connected", inventory: "{}", message: nil), previous: nil)
        let read = try #require(try await store.hostStatuses().first)
        #expect(read.power == nil)
        // DPM powers it off meanwhile.
        try await store.setHostStatus(.init(name: "h1", state: "poweredOff", inventory: "{}", message: "standby", power: #"{"state":"standby"}"#))
        // The stale observation is dropped.
        try await store.setObservedHostStatus(.init(name: "h1", state: "connected", inventory: "{\"new\":1}", message: nil), previous: read)
        var now = try #require(try await store.hostStatuses().first)
        #expect(now.state == "poweredOff" && now.power == #"{"state":"standby"}"#)
        // A current one is written.
        try await store.setObservedHostStatus(.init(name: "h1", state: "poweredOff", inventory: "{}", message: "still off", power: now.power), previous: now)
        now = try #require(try await store.hostStatuses().first)
        #expect(now.message == "still off")
        try await store.close()
    }

    /// Writes racing reads and each other: a reader always sees the VM's status (the old one or the
    /// new one, never none), and every changed spec gets a generation of its own.
    @Test(arguments: Backend.available)
    func concurrentWritesAreAtomic(_ backend: Backend) async throws {
        let path = backend == .sqlite ? FileManager.default.temporaryDirectory.appendingPathComponent("vs-store-\(UUID().uuidString).db").path : try await backend.fresh()
        defer { if backend == .sqlite { try? FileManager.default.removeItem(atPath: path) } }
        let store = try await Store.open(path, logger: Logger(label: "test"))
        try await store.setVMStatus(.init(name: "a", host: "h1", state: "running", uuid: "u", message: nil, generation: 0))
        let missed = try await withThrowingTaskGroup(of: Int.self) { group in
            group.addTask {
                for g in 1...200 {
                    try await store.setVMStatus(.init(name: "a", host: g % 2 == 0 ? "h1" : "h2", state: "running", uuid: "u", message: nil, generation: Int64(g)))
                }
                return 0
            }
            for _ in 0..<4 {
                group.addTask {
                    var missed = 0
                    for _ in 0..<200 where try await store.vmStatuses().first(where: { $0.name == "a" }) == nil { missed += 1 }
                    return missed
                }
            }
            return try await group.reduce(0, +)
        }
        #expect(missed == 0, "a reader saw no status \(missed) times")
        #expect(try await store.vmStatuses().map(\.generation) == [200])

        let changed = try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<50 { group.addTask { try await store.put(kind: "vm", name: "b", spec: #"{"n":\#(i)}"#) } }
            return try await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(changed.allSatisfy { $0 }, "every spec differs from the one before it")
        #expect(try await store.object(kind: "vm", name: "b")?.generation == 50, "fifty changes, fifty generations")

        // Each add returns the id of its own row, however many run at once.
        let tasks = try await withThrowingTaskGroup(of: (String, Int64).self) { group in
            for i in 0..<50 { group.addTask { ("t\(i)", try await store.addTask(action: "define", kind: "vm", name: "t\(i)", host: nil, reason: "test")) } }
            return try await group.reduce(into: [String: Int64]()) { $0[$1.0] = $1.1 }
        }
        let taskRows = Dictionary(uniqueKeysWithValues: try await store.tasks(limit: 1000).map { ($0.name, $0.id) })
        #expect(tasks == taskRows)
        let migrations = try await withThrowingTaskGroup(of: (String, Int64).self) { group in
            for i in 0..<50 { group.addTask { ("m\(i)", try await store.addMigration(vm: "m\(i)", source: "h1", destination: "h2", state: "queued") { "\($0)" }) } }
            return try await group.reduce(into: [String: Int64]()) { $0[$1.0] = $1.1 }
        }
        let migrationRows = try await store.migrations(limit: 1000)
        #expect(migrations == Dictionary(uniqueKeysWithValues: migrationRows.map { ($0.vm, $0.id) }))
        let events = try await withThrowingTaskGroup(of: (String, Int64).self) { group in
            for i in 0..<50 { group.addTask { ("e\(i)", try await store.addEvent(source: "test", kind: "vm", name: "e\(i)", event: nil, detail: nil, message: nil)) } }
            return try await group.reduce(into: [String: Int64]()) { $0[$1.0] = $1.1 }
        }
        #expect(events == Dictionary(uniqueKeysWithValues: try await store.events().compactMap { e in e.name.map { ($0, e.id) } }))

        // One clear wins; the other finds nothing open.
        _ = try await store.raiseAlarm(key: "k", kind: "drift", name: nil, host: nil, message: "m")
        async let c1 = store.clearAlarm(key: "k", note: "1")
        async let c2 = store.clearAlarm(key: "k", note: "2")
        #expect(try await [c1, c2].filter { $0 }.count == 1)
        try await store.close()
    }

    @Test func badPostgresURLIsAClearError() async throws {
        await #expect(throws: StoreError.self) { try await Store.open("postgres:///nohost", logger: Logger(label: "t")) }
    }

    @Test func postgresRunsWhereMakeTestStartsIt() {
        // make test always starts the server; outside it this tier is skipped, and says so.
        if ProcessInfo.processInfo.environment["VSPHERE_TESTBED"] != nil { #expect(!postgresURL.isEmpty, "make test must start PostgreSQL") }
    }
}

/// The controller's PostgreSQL goes away and comes back (a restart, a failover): the store answers
/// again without the controller restarting, and nothing written before is lost. A server of its own
/// (scripts/pg-test-server.sh), so the shared one stays up for the other tests.
@Suite(.enabled(if: !postgresURL.isEmpty, "needs PostgreSQL (make test starts it)"))
struct PostgresReconnect {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../scripts/pg-test-server.sh").standardized.path

    /// Runs the script to its exit (posix_spawn; a server it leaves running holds no pipe of ours open).
    func pg(_ args: String...) throws {
        _ = try Spawn.run("/bin/bash", [Self.script] + args, timeoutSeconds: 120)
    }

    @Test func storeAnswersAgainAfterTheServerRestarts() async throws {
        let dir = "/tmp/vsphere-pg-reconnect-\(getpid())"
        let port = String(56_000 + Int(getpid() % 1000))
        try pg("start", dir, port)
        let url = "postgres://postgres@127.0.0.1:\(port)/vsphere"
        defer { try? pg("stop", dir) }
        let store = try await Store.open(url, logger: Logger(label: "test"))
        try await store.put(kind: "vm", name: "before", spec: #"{"name":"before"}"#)
        try pg("kill", dir)
        await #expect(throws: (any Error).self, "the server is down") { try await store.put(kind: "vm", name: "during", spec: "{}") }
        try pg("resume", dir, port)
        // The pool replaces its dead connections and retries with a growing backoff (postgres-nio: 100 ms
        // growing by 1.25 per failure, at most 60 s; requests fail at once while its circuit breaker is
        // open): the store answers again within about a minute of the server's return.
        var back = false
        for _ in 0..<480 where !back {
            back = (try? await store.put(kind: "vm", name: "after", spec: #"{"name":"after"}"#)) != nil
            if !back { try await Task.sleep(for: .milliseconds(250)) }
        }
        #expect(back, "the store answered again after the server came back")
        #expect(try await store.object(kind: "vm", name: "before") != nil)
        #expect(try await store.object(kind: "vm", name: "after") != nil)
        try await store.close()
    }
}
