import ClusterModel
import Foundation
import Logging
import SQLiteNIO

/// A value bound into or read from SQL; the subset both SQLite and PostgreSQL share.
public enum SQLValue: Sendable, Equatable {
    case int(Int64)
    case text(String)
    case null

    public var int: Int64? { if case .int(let v) = self { return v } else { return nil } }
    public var text: String? { if case .text(let v) = self { return v } else { return nil } }
}

public typealias SQLRow = [String: SQLValue]

/// One SQL database. Statements use `$1, $2, ...` placeholders, which both SQLite and PostgreSQL
/// accept, so the schema and every query are written once.
public protocol SQLBackend: Sendable {
    var kind: String { get }
    func execute(_ sql: String, _ binds: [SQLValue]) async throws
    func query(_ sql: String, _ binds: [SQLValue]) async throws -> [SQLRow]
    /// Runs the statements in one transaction on one connection: all of them, or none.
    func transaction(_ statements: [(sql: String, binds: [SQLValue])]) async throws
    func close() async throws
}

/// SQLite through sqlite-nio: one connection, WAL journal, foreign keys on.
public final class SQLiteBackend: SQLBackend {
    public let kind = "sqlite"
    let connection: SQLiteConnection

    public init(path: String, logger: Logger) async throws {
        if path != ":memory:" {
            try FileManager.default.createDirectory(
                atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        }
        connection = try await SQLiteConnection.open(storage: path == ":memory:" ? .memory : .file(path: path), logger: logger)
        try await execute("PRAGMA journal_mode = WAL", [])
        try await execute("PRAGMA synchronous = FULL", [])
        try await execute("PRAGMA foreign_keys = ON", [])
        try await execute("PRAGMA busy_timeout = 5000", [])
    }

    static func data(_ v: SQLValue) -> SQLiteData {
        switch v {
        case .int(let i): return .integer(Int(i))
        case .text(let s): return .text(s)
        case .null: return .null
        }
    }

    public func execute(_ sql: String, _ binds: [SQLValue]) async throws {
        try await connection.query(sql, binds.map(Self.data)) { _ in }
    }

    public func transaction(_ statements: [(sql: String, binds: [SQLValue])]) async throws {
        try await execute("BEGIN", [])
        do {
            for s in statements { try await execute(s.sql, s.binds) }
            try await execute("COMMIT", [])
        } catch {
            try? await execute("ROLLBACK", [])
            throw error
        }
    }

    public func query(_ sql: String, _ binds: [SQLValue]) async throws -> [SQLRow] {
        let rows = RowCollector()
        try await connection.query(sql, binds.map(Self.data)) { row in rows.add(row) }
        return rows.rows.map { row in
            var out: SQLRow = [:]
            for c in row.columns {
                switch c.data {
                case .integer(let i): out[c.name] = .int(Int64(i))
                case .float(let d): out[c.name] = .int(Int64(d))
                case .text(let s): out[c.name] = .text(s)
                case .blob(let b): out[c.name] = .text(String(buffer: b))
                case .null: out[c.name] = .null
                }
            }
            return out
        }
    }

    public func close() async throws { try await connection.close() }
}

final class RowCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var _rows: [SQLiteRow] = []
    func add(_ r: SQLiteRow) {
        lock.lock()
        _rows.append(r)
        lock.unlock()
    }
    var rows: [SQLiteRow] {
        lock.lock()
        defer { lock.unlock() }
        return _rows
    }
}

/// Versioned schema migrations; each runs once, in order, recorded in `schema_migrations`.
public enum Migrations {
    public static let all: [(version: Int, statements: [String])] = [
        (1, [
            """
            CREATE TABLE objects (
                kind TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL, generation BIGINT NOT NULL,
                updated_ms BIGINT NOT NULL, PRIMARY KEY (kind, name))
            """,
            """
            CREATE TABLE vm_status (
                name TEXT PRIMARY KEY, host TEXT, state TEXT NOT NULL, uuid TEXT, message TEXT,
                generation BIGINT NOT NULL, updated_ms BIGINT NOT NULL)
            """,
            """
            CREATE TABLE host_status (
                name TEXT PRIMARY KEY, state TEXT NOT NULL, inventory TEXT, message TEXT, updated_ms BIGINT NOT NULL)
            """,
            """
            CREATE TABLE tasks (
                id BIGINT PRIMARY KEY, action TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, host TEXT,
                state TEXT NOT NULL, reason TEXT NOT NULL, error TEXT, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL)
            """,
            """
            CREATE TABLE events (
                id BIGINT PRIMARY KEY, time_ms BIGINT NOT NULL, source TEXT NOT NULL, kind TEXT NOT NULL,
                name TEXT, event TEXT, detail TEXT, message TEXT)
            """,
            "CREATE INDEX tasks_by_name ON tasks (kind, name)",
        ]),
        (2, [
            // Live migrations: the columns the controller queries on, and the whole record as JSON.
            """
            CREATE TABLE migrations (
                id BIGINT PRIMARY KEY, vm TEXT NOT NULL, source TEXT NOT NULL, destination TEXT NOT NULL,
                state TEXT NOT NULL, record TEXT NOT NULL, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL)
            """,
            "CREATE INDEX migrations_by_state ON migrations (state)",
        ]),
        (3, [
            // A host's power record (JSON): on, standby, poweringOn, poweringOff, off; since when, by whom.
            "ALTER TABLE host_status ADD COLUMN power TEXT",
        ]),
        (4, [
            // One-time tokens a host joins the cluster with (only their SHA-256 is kept).
            """
            CREATE TABLE join_tokens (
                digest TEXT PRIMARY KEY, host TEXT NOT NULL, created_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL, used_ms BIGINT)
            """,
        ]),
        (5, [
            // Users' API tokens (only their SHA-256 is kept) and the hash-chained audit log.
            """
            CREATE TABLE api_tokens (
                digest TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, created_ms BIGINT NOT NULL, revoked_ms BIGINT)
            """,
            """
            CREATE TABLE audit (
                id BIGINT PRIMARY KEY, time_ms BIGINT NOT NULL, actor TEXT NOT NULL, role TEXT NOT NULL, method TEXT NOT NULL,
                path TEXT NOT NULL, status BIGINT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL)
            """,
        ]),
        (6, [
            // Alarms raised at the virtual layer (drift, rogue VMs, guest panics...); `key` folds repeats of
            // one condition into one active alarm.
            """
            CREATE TABLE alarms (
                id BIGINT PRIMARY KEY, key TEXT NOT NULL, time_ms BIGINT NOT NULL, kind TEXT NOT NULL, name TEXT, host TEXT,
                message TEXT NOT NULL, state TEXT NOT NULL, updated_ms BIGINT NOT NULL, note TEXT)
            """,
            "CREATE INDEX alarms_by_key ON alarms (key, state)",
        ]),
        (7, [
            // When the host saw an event (its agent's clock), beside when the controller recorded it.
            "ALTER TABLE events ADD COLUMN host_ms BIGINT",
        ]),
        (8, [
            // The names a join token's certificate will carry, fixed when the token is made (one per line).
            "ALTER TABLE join_tokens ADD COLUMN names TEXT",
        ]),
    ]
}

/// Desired state (the manifests' objects), observed state (VMs and hosts as agents report them),
/// tasks and events. An actor: the controller's writes are serialized.
public actor Store {
    public let backend: any SQLBackend
    private var nextTaskID: Int64 = 0
    private var nextEventID: Int64 = 0
    private var nextMigrationID: Int64 = 0
    private var nextAlarmID: Int64?
    private var raising = Set<String>()
    private var auditHead: (id: Int64, hash: String)?

    public init(backend: any SQLBackend) async throws {
        self.backend = backend
        try await migrate()
        nextTaskID = try await backend.query("SELECT COALESCE(MAX(id), 0) AS m FROM tasks", []).first?["m"]?.int ?? 0
        nextEventID = try await backend.query("SELECT COALESCE(MAX(id), 0) AS m FROM events", []).first?["m"]?.int ?? 0
        nextMigrationID = try await backend.query("SELECT COALESCE(MAX(id), 0) AS m FROM migrations", []).first?["m"]?.int ?? 0
    }

    /// Opens a store from a `--database` value: `postgres://...` (PostgreSQL), a file path or
    /// `sqlite:PATH` (SQLite).
    /// The store's URL with any password replaced by `***`, for logs and errors.
    public static func redacted(_ database: String) -> String {
        guard hasPassword(database), let at = database.lastIndex(of: "@"),
              let scheme = database.range(of: "://"), let colon = database[scheme.upperBound..<at].firstIndex(of: ":")
        else { return database }
        return String(database[..<database.index(after: colon)]) + "***" + String(database[at...])
    }

    /// Whether a postgres URL carries a password (`user:password@`).
    public static func hasPassword(_ database: String) -> Bool {
        guard database.hasPrefix("postgres://") || database.hasPrefix("postgresql://"),
              let scheme = database.range(of: "://"), let at = database.lastIndex(of: "@"), scheme.upperBound < at else { return false }
        return database[scheme.upperBound..<at].contains(":")
    }

    public static func open(_ database: String, logger: Logger) async throws -> Store {
        let backend: any SQLBackend
        if database.hasPrefix("postgres://") || database.hasPrefix("postgresql://") {
            backend = try await PostgresBackend(url: database, logger: logger)
        } else {
            backend = try await SQLiteBackend(path: database.hasPrefix("sqlite:") ? String(database.dropFirst(7)) : database, logger: logger)
        }
        do {
            return try await Store(backend: backend)
        } catch {
            // A connection must be closed before it goes (postgres-nio asserts it).
            try? await backend.close()
            throw error
        }
    }

    func migrate() async throws {
        try await backend.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)", [])
        let done = Set(try await backend.query("SELECT version FROM schema_migrations", []).compactMap { $0["version"]?.int })
        for m in Migrations.all where !done.contains(Int64(m.version)) {
            try await backend.transaction(
                m.statements.map { ($0, []) }
                    + [("INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)", [.int(Int64(m.version)), .int(now())])])
        }
    }

    public func schemaVersion() async throws -> Int {
        Int(try await backend.query("SELECT MAX(version) AS v FROM schema_migrations", []).first?["v"]?.int ?? 0)
    }

    func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    // MARK: Desired objects

    public struct Object: Sendable, Equatable {
        public var kind: String
        public var name: String
        public var spec: String
        public var generation: Int64
    }

    /// Inserts or updates; returns whether anything changed (same spec: no new generation).
    @discardableResult
    public func put(kind: String, name: String, spec: String) async throws -> Bool {
        // One statement: two applies at once each read the old generation and wrote the same next one
        // (a reconcile pass then took the second spec for one it had already defined).
        try await !backend.query(
            """
            INSERT INTO objects (kind, name, spec, generation, updated_ms) VALUES ($1, $2, $3, 1, $4)
            ON CONFLICT (kind, name) DO UPDATE SET spec = excluded.spec, generation = objects.generation + 1,
                updated_ms = excluded.updated_ms
            WHERE objects.spec <> excluded.spec
            RETURNING generation
            """,
            [.text(kind), .text(name), .text(spec), .int(now())]
        ).isEmpty
    }

    public func objects(kind: String) async throws -> [Object] {
        try await backend.query("SELECT kind, name, spec, generation FROM objects WHERE kind = $1 ORDER BY name", [.text(kind)]).map {
            Object(kind: kind, name: $0["name"]?.text ?? "", spec: $0["spec"]?.text ?? "", generation: $0["generation"]?.int ?? 0)
        }
    }

    public func object(kind: String, name: String) async throws -> Object? {
        try await backend.query("SELECT spec, generation FROM objects WHERE kind = $1 AND name = $2", [.text(kind), .text(name)]).first.map {
            Object(kind: kind, name: name, spec: $0["spec"]?.text ?? "", generation: $0["generation"]?.int ?? 0)
        }
    }

    @discardableResult
    public func delete(kind: String, name: String) async throws -> Bool {
        try await !backend.query("DELETE FROM objects WHERE kind = $1 AND name = $2 RETURNING name", [.text(kind), .text(name)]).isEmpty
    }

    // MARK: Observed VMs

    public struct VMStatus: Sendable, Equatable, Codable {
        public var name: String
        public var host: String?
        public var state: String
        public var uuid: String?
        public var message: String?
        public var generation: Int64
        public init(name: String, host: String?, state: String, uuid: String?, message: String?, generation: Int64) {
            self.name = name
            self.host = host
            self.state = state
            self.uuid = uuid
            self.message = message
            self.generation = generation
        }
    }

    public func setVMStatus(_ s: VMStatus) async throws {
        // One statement: a reader between a delete and an insert saw no status at all, and a migration
        // request in that gap was refused as "pending".
        try await backend.execute(
            """
            INSERT INTO vm_status (name, host, state, uuid, message, generation, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (name) DO UPDATE SET host = excluded.host, state = excluded.state, uuid = excluded.uuid,
                message = excluded.message, generation = excluded.generation, updated_ms = excluded.updated_ms
            """,
            [.text(s.name), s.host.map(SQLValue.text) ?? .null, .text(s.state), s.uuid.map(SQLValue.text) ?? .null,
             s.message.map(SQLValue.text) ?? .null, .int(s.generation), .int(now())])
    }

    public func vmStatuses() async throws -> [VMStatus] {
        try await backend.query("SELECT * FROM vm_status ORDER BY name", []).map {
            VMStatus(
                name: $0["name"]?.text ?? "", host: $0["host"]?.text, state: $0["state"]?.text ?? "pending",
                uuid: $0["uuid"]?.text, message: $0["message"]?.text, generation: $0["generation"]?.int ?? 0)
        }
    }

    public func deleteVMStatus(_ name: String) async throws {
        try await backend.execute("DELETE FROM vm_status WHERE name = $1", [.text(name)])
    }

    // MARK: Observed hosts

    public struct HostStatus: Sendable, Equatable, Codable {
        public var name: String
        public var state: String
        public var inventory: String?
        public var message: String?
        /// The power record (JSON), kept by the controller's power management.
        public var power: String?
        public init(name: String, state: String, inventory: String?, message: String?, power: String? = nil) {
            self.name = name
            self.state = state
            self.inventory = inventory
            self.message = message
            self.power = power
        }
    }

    public func setHostStatus(_ s: HostStatus) async throws {
        // One statement: a reader never sees the host without its row.
        try await backend.execute(
            """
            INSERT INTO host_status (name, state, inventory, message, updated_ms, power) VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (name) DO UPDATE SET state = excluded.state, inventory = excluded.inventory, message = excluded.message,
                updated_ms = excluded.updated_ms, power = excluded.power
            """,
            [.text(s.name), .text(s.state), s.inventory.map(SQLValue.text) ?? .null, s.message.map(SQLValue.text) ?? .null, .int(now()),
             s.power.map(SQLValue.text) ?? .null])
    }

    /// Writes an observation unless the host's state or power record changed since the caller read
    /// `previous` (a power action or maintenance switch written meanwhile wins; the next observation
    /// sees it). Inserts when there was no row.
    public func setObservedHostStatus(_ s: HostStatus, previous: HostStatus?) async throws {
        guard let previous else { return try await setHostStatus(s) }
        try await backend.execute(
            """
            UPDATE host_status SET state = $1, inventory = $2, message = $3, updated_ms = $4, power = $5
            WHERE name = $6 AND state = $7 AND COALESCE(power, '') = $8
            """,
            // In order of appearance: SQLite numbers `$N` parameters as they first appear.
            [.text(s.state), s.inventory.map(SQLValue.text) ?? .null, s.message.map(SQLValue.text) ?? .null, .int(now()),
             s.power.map(SQLValue.text) ?? .null, .text(s.name), .text(previous.state), .text(previous.power ?? "")])
    }

    public func hostStatuses() async throws -> [HostStatus] {
        try await backend.query("SELECT * FROM host_status ORDER BY name", []).map {
            HostStatus(
                name: $0["name"]?.text ?? "", state: $0["state"]?.text ?? "disconnected", inventory: $0["inventory"]?.text,
                message: $0["message"]?.text, power: $0["power"]?.text)
        }
    }

    // MARK: API tokens and the audit log

    public struct APIToken: Sendable, Equatable {
        public var name: String
        public var role: String
        public var createdMs: Int64
        public var revokedMs: Int64?
    }

    public func addAPIToken(digest: String, name: String, role: String) async throws {
        try await backend.execute(
            "INSERT INTO api_tokens (digest, name, role, created_ms) VALUES ($1, $2, $3, $4)", [.text(digest), .text(name), .text(role), .int(now())])
    }

    /// The token's holder and role, unless it is unknown or revoked.
    public func apiToken(digest: String) async throws -> APIToken? {
        try await backend.query("SELECT * FROM api_tokens WHERE digest = $1 AND revoked_ms IS NULL", [.text(digest)]).first.map(Self.apiToken)
    }

    public func apiTokens() async throws -> [APIToken] {
        try await backend.query("SELECT * FROM api_tokens ORDER BY created_ms, name", []).map(Self.apiToken)
    }

    /// Revokes every token of `name`; returns how many were live.
    public func revokeAPITokens(name: String) async throws -> Int {
        try await backend.query(
            "UPDATE api_tokens SET revoked_ms = $1 WHERE name = $2 AND revoked_ms IS NULL RETURNING digest", [.int(now()), .text(name)]
        ).count
    }

    static func apiToken(_ r: SQLRow) -> APIToken {
        APIToken(name: r["name"]?.text ?? "", role: r["role"]?.text ?? "viewer", createdMs: r["created_ms"]?.int ?? 0, revokedMs: r["revoked_ms"]?.int)
    }

    public struct AuditEntry: Sendable, Equatable {
        public var id: Int64
        public var timeMs: Int64
        public var actor: String
        public var role: String
        public var method: String
        public var path: String
        public var status: Int
        public var prev: String
        public var hash: String
    }

    /// Appends to the audit log; `hash` gets the new record with its id, time and previous hash. Appends
    /// run one at a time (the chain never forks), and the head moves only once the record is stored: a
    /// failed insert throws and leaves the chain as it was.
    @discardableResult
    public func appendAudit(actor: String, role: String, method: String, path: String, status: Int, genesis: String,
                            hash: @Sendable (AuditEntry) -> String) async throws -> AuditEntry {
        await auditTurn()
        defer { auditTurnDone() }
        if auditHead == nil {
            let last = try await backend.query("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1", []).first
            auditHead = ((last?["id"]?.int ?? 0), last?["hash"]?.text ?? genesis)
        }
        var e = AuditEntry(
            id: auditHead!.id + 1, timeMs: now(), actor: actor, role: role, method: method, path: path, status: status,
            prev: auditHead!.hash, hash: "")
        e.hash = hash(e)
        do {
            try await backend.execute(
                "INSERT INTO audit (id, time_ms, actor, role, method, path, status, prev, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                [.int(e.id), .int(e.timeMs), .text(e.actor), .text(e.role), .text(e.method), .text(e.path), .int(Int64(e.status)), .text(e.prev), .text(e.hash)])
        } catch {
            // Read the head again next time: the insert may have landed after all.
            auditHead = nil
            throw error
        }
        auditHead = (e.id, e.hash)
        return e
    }

    /// The audit log's appends, one at a time (the actor alone would interleave them at each await).
    private var auditBusy = false
    private var auditWaiting: [CheckedContinuation<Void, Never>] = []

    private func auditTurn() async {
        if !auditBusy {
            auditBusy = true
            return
        }
        await withCheckedContinuation { auditWaiting.append($0) }
    }

    private func auditTurnDone() {
        if auditWaiting.isEmpty { auditBusy = false } else { auditWaiting.removeFirst().resume() }
    }

    /// Deletes finished tasks, events and closed alarms older than their cut-offs (ms since the epoch);
    /// returns how many rows of each went.
    @discardableResult
    public func prune(tasksBefore: Int64, eventsBefore: Int64, alarmsBefore: Int64) async throws -> (tasks: Int, events: Int, alarms: Int) {
        let t = try await backend.query("DELETE FROM tasks WHERE created_ms < $1 AND state <> 'running' RETURNING id", [.int(tasksBefore)]).count
        let e = try await backend.query("DELETE FROM events WHERE time_ms < $1 RETURNING id", [.int(eventsBefore)]).count
        let a = try await backend.query(
            "DELETE FROM alarms WHERE updated_ms < $1 AND state NOT IN ('active', 'acknowledged') RETURNING id", [.int(alarmsBefore)]).count
        return (t, e, a)
    }

    /// The highest audit record id (0 for an empty log).
    public func lastAuditID() async throws -> Int64 {
        try await backend.query("SELECT id FROM audit ORDER BY id DESC LIMIT 1", []).first?["id"]?.int ?? 0
    }

    public func auditLog(after: Int64 = 0, limit: Int = 100_000) async throws -> [AuditEntry] {
        try await backend.query("SELECT * FROM audit WHERE id > $1 ORDER BY id LIMIT $2", [.int(after), .int(Int64(limit))]).map {
            AuditEntry(
                id: $0["id"]?.int ?? 0, timeMs: $0["time_ms"]?.int ?? 0, actor: $0["actor"]?.text ?? "", role: $0["role"]?.text ?? "",
                method: $0["method"]?.text ?? "", path: $0["path"]?.text ?? "", status: Int($0["status"]?.int ?? 0),
                prev: $0["prev"]?.text ?? "", hash: $0["hash"]?.text ?? "")
        }
    }

    // MARK: Alarms

    public struct Alarm: Sendable, Equatable {
        public var id: Int64
        public var key: String
        public var timeMs: Int64
        public var kind: String
        public var name: String?
        public var host: String?
        public var message: String
        /// `active`, `acknowledged`, `cleared`.
        public var state: String
        public var updatedMs: Int64
        public var note: String?
    }

    /// Raises an alarm unless one with the same key is still active or acknowledged; returns the new one.
    public func raiseAlarm(key: String, kind: String, name: String?, host: String?, message: String) async throws -> Alarm? {
        // Claimed before any await: the actor interleaves at suspension points.
        guard !raising.contains(key) else { return nil }
        raising.insert(key)
        defer { raising.remove(key) }
        let open = try await backend.query("SELECT id FROM alarms WHERE key = $1 AND state IN ('active', 'acknowledged')", [.text(key)])
        guard open.isEmpty else { return nil }
        if nextAlarmID == nil { nextAlarmID = try await backend.query("SELECT COALESCE(MAX(id), 0) AS m FROM alarms", []).first?["m"]?.int ?? 0 }
        nextAlarmID! += 1
        let id = nextAlarmID!
        let t = now()
        let a = Alarm(id: id, key: key, timeMs: t, kind: kind, name: name, host: host, message: message, state: "active", updatedMs: t, note: nil)
        try await backend.execute(
            "INSERT INTO alarms (id, key, time_ms, kind, name, host, message, state, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $3)",
            [.int(id), .text(key), .int(t), .text(kind), name.map(SQLValue.text) ?? .null, host.map(SQLValue.text) ?? .null, .text(message), .text("active")])
        return a
    }

    /// Clears the open alarm of `key` (its condition is gone); returns whether there was one.
    @discardableResult
    public func clearAlarm(key: String, note: String) async throws -> Bool {
        try await !backend.query(
            "UPDATE alarms SET state = $1, updated_ms = $2, note = $3 WHERE key = $4 AND state IN ('active', 'acknowledged') RETURNING id",
            [.text("cleared"), .int(now()), .text(note), .text(key)]
        ).isEmpty
    }

    /// An operator saw it: acknowledged (it stays open until its condition clears), or closed at once
    /// when its kind is in `closing` (one-time events: nothing observable clears them, and the next
    /// such event raises a new alarm). false: no such active alarm.
    public func acknowledgeAlarm(id: Int64, by: String, closing: Set<String> = []) async throws -> Bool {
        guard let row = try await backend.query("SELECT kind FROM alarms WHERE id = $1 AND state = 'active'", [.int(id)]).first else { return false }
        let close = closing.contains(row["kind"]?.text ?? "")
        try await backend.execute(
            "UPDATE alarms SET state = $1, updated_ms = $2, note = $3 WHERE id = $4",
            [.text(close ? "cleared" : "acknowledged"), .int(now()), .text("acknowledged by \(by)"), .int(id)])
        return true
    }

    public func alarms(limit: Int = 1000) async throws -> [Alarm] {
        try await backend.query("SELECT * FROM alarms ORDER BY id DESC LIMIT $1", [.int(Int64(limit))]).map {
            Alarm(
                id: $0["id"]?.int ?? 0, key: $0["key"]?.text ?? "", timeMs: $0["time_ms"]?.int ?? 0, kind: $0["kind"]?.text ?? "",
                name: $0["name"]?.text, host: $0["host"]?.text, message: $0["message"]?.text ?? "", state: $0["state"]?.text ?? "active",
                updatedMs: $0["updated_ms"]?.int ?? 0, note: $0["note"]?.text)
        }
    }

    /// Keys of the alarms still open.
    public func openAlarmKeys(prefix: String) async throws -> Set<String> {
        let like = prefix.replacingOccurrences(of: "%", with: "").replacingOccurrences(of: "_", with: "") + "%"
        return Set(try await backend.query("SELECT key FROM alarms WHERE state IN ('active', 'acknowledged') AND key LIKE $1", [.text(like)])
            .compactMap { $0["key"]?.text }.filter { $0.hasPrefix(prefix) })
    }

    /// Whether the alarm of `key` is open.
    public func isAlarmOpen(_ key: String) async throws -> Bool {
        try await backend.query("SELECT id FROM alarms WHERE key = $1 AND state IN ('active', 'acknowledged') LIMIT 1", [.text(key)]).first != nil
    }

    // MARK: Join tokens

    public func addJoinToken(digest: String, host: String, names: [String], expiresMs: Int64) async throws {
        try await backend.execute(
            "INSERT INTO join_tokens (digest, host, created_ms, expires_ms, names) VALUES ($1, $2, $3, $4, $5)",
            [.text(digest), .text(host), .int(now()), .int(expiresMs), .text(names.joined(separator: "\n"))])
    }

    /// Uses a token once: the host it was made for and the names its certificate gets, or nil when it
    /// is unknown, used or expired. One statement: two joins with one token cannot both win (the actor
    /// does not serialize across awaits).
    public func useJoinToken(digest: String) async throws -> (host: String, names: [String])? {
        guard let row = try await backend.query(
            "UPDATE join_tokens SET used_ms = $1 WHERE digest = $2 AND used_ms IS NULL AND expires_ms > $1 RETURNING host, names",
            [.int(now()), .text(digest)]
        ).first, let host = row["host"]?.text else { return nil }
        let names = (row["names"]?.text ?? host).split(separator: "\n").map(String.init)
        return (host, names)
    }

    // MARK: Tasks and events

    public struct Task: Sendable, Equatable, Codable {
        public var id: Int64
        public var action: String
        public var kind: String
        public var name: String
        public var host: String?
        public var state: String
        public var reason: String
        public var error: String?
        public var createdMs: Int64
    }

    public func addTask(action: String, kind: String, name: String, host: String?, reason: String) async throws -> Int64 {
        nextTaskID += 1
        // Claimed before the await: a concurrent add moves the counter on meanwhile.
        let id = nextTaskID
        let t = now()
        try await backend.execute(
            "INSERT INTO tasks (id, action, kind, name, host, state, reason, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $7)",
            [.int(id), .text(action), .text(kind), .text(name), host.map(SQLValue.text) ?? .null, .text(reason), .int(t)])
        return id
    }

    public func finishTask(_ id: Int64, error: String?) async throws {
        try await backend.execute(
            "UPDATE tasks SET state = $1, error = $2, updated_ms = $3 WHERE id = $4",
            [.text(error == nil ? "done" : "failed"), error.map(SQLValue.text) ?? .null, .int(now()), .int(id)])
    }

    public func tasks(limit: Int = 200) async throws -> [Task] {
        try await backend.query("SELECT * FROM tasks ORDER BY id DESC LIMIT $1", [.int(Int64(limit))]).map {
            Task(
                id: $0["id"]?.int ?? 0, action: $0["action"]?.text ?? "", kind: $0["kind"]?.text ?? "", name: $0["name"]?.text ?? "",
                host: $0["host"]?.text, state: $0["state"]?.text ?? "", reason: $0["reason"]?.text ?? "", error: $0["error"]?.text,
                createdMs: $0["created_ms"]?.int ?? 0)
        }
    }

    public struct Event: Sendable, Equatable, Codable {
        public var id: Int64
        public var timeMs: Int64
        public var source: String
        public var kind: String
        public var name: String?
        public var event: String?
        public var detail: String?
        public var message: String?
        /// When the host saw it (hosts' events only).
        public var hostMs: Int64? = nil
    }

    @discardableResult
    public func addEvent(source: String, kind: String, name: String?, event: String?, detail: String?, message: String?, hostMs: Int64? = nil) async throws -> Int64 {
        nextEventID += 1
        // Claimed before the await: a concurrent add moves the counter on meanwhile.
        let id = nextEventID
        try await backend.execute(
            "INSERT INTO events (id, time_ms, source, kind, name, event, detail, message, host_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            [.int(id), .int(now()), .text(source), .text(kind), name.map(SQLValue.text) ?? .null,
             event.map(SQLValue.text) ?? .null, detail.map(SQLValue.text) ?? .null, message.map(SQLValue.text) ?? .null,
             hostMs.map(SQLValue.int) ?? .null])
        return id
    }

    /// The newest `limit` events, oldest first.
    public func latestEvents(limit: Int = 500) async throws -> [Event] {
        guard let top = try await backend.query("SELECT COALESCE(MAX(id), 0) AS m FROM events", []).first?["m"]?.int else { return [] }
        return try await events(after: max(0, top - Int64(limit)), limit: limit)
    }

    public func events(after: Int64 = 0, limit: Int = 500) async throws -> [Event] {
        try await backend.query("SELECT * FROM events WHERE id > $1 ORDER BY id LIMIT $2", [.int(after), .int(Int64(limit))]).map {
            Event(
                id: $0["id"]?.int ?? 0, timeMs: $0["time_ms"]?.int ?? 0, source: $0["source"]?.text ?? "", kind: $0["kind"]?.text ?? "",
                name: $0["name"]?.text, event: $0["event"]?.text, detail: $0["detail"]?.text, message: $0["message"]?.text,
                hostMs: $0["host_ms"]?.int)
        }
    }

    // MARK: Migrations

    /// A migration row: the queried columns and the controller's record (JSON).
    public struct Migration: Sendable, Equatable {
        public var id: Int64
        public var vm: String
        public var source: String
        public var destination: String
        /// `queued`, `starting`, `running`, `completed`, `failed`, `cancelled`, `aborted`.
        public var state: String
        public var record: String
        public var createdMs: Int64

        public static let activeStates = ["queued", "starting", "running"]
        public var isActive: Bool { Self.activeStates.contains(state) }
    }

    /// Records a new migration; returns its id.
    public func addMigration(vm: String, source: String, destination: String, state: String, record: (Int64) -> String) async throws -> Int64 {
        nextMigrationID += 1
        // Claimed before the await: a concurrent add moves the counter on meanwhile.
        let id = nextMigrationID
        let t = now()
        try await backend.execute(
            "INSERT INTO migrations (id, vm, source, destination, state, record, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            [.int(id), .text(vm), .text(source), .text(destination), .text(state), .text(record(id)), .int(t)])
        return id
    }

    public func updateMigration(_ id: Int64, state: String, record: String) async throws {
        try await backend.execute(
            "UPDATE migrations SET state = $1, record = $2, updated_ms = $3 WHERE id = $4",
            [.text(state), .text(record), .int(now()), .int(id)])
    }

    public func migrations(limit: Int = 200) async throws -> [Migration] {
        try await backend.query("SELECT * FROM migrations ORDER BY id DESC LIMIT $1", [.int(Int64(limit))]).map(Self.migration)
    }

    public func activeMigrations() async throws -> [Migration] {
        try await backend.query(
            "SELECT * FROM migrations WHERE state IN ('queued', 'starting', 'running') ORDER BY id", []
        ).map(Self.migration)
    }

    public func migration(id: Int64) async throws -> Migration? {
        try await backend.query("SELECT * FROM migrations WHERE id = $1", [.int(id)]).first.map(Self.migration)
    }

    static func migration(_ r: SQLRow) -> Migration {
        Migration(
            id: r["id"]?.int ?? 0, vm: r["vm"]?.text ?? "", source: r["source"]?.text ?? "",
            destination: r["destination"]?.text ?? "", state: r["state"]?.text ?? "", record: r["record"]?.text ?? "{}",
            createdMs: r["created_ms"]?.int ?? 0)
    }

    public func close() async throws { try await backend.close() }
}

public enum StoreError: Error, CustomStringConvertible {
    case unsupported(String)
    public var description: String {
        switch self {
        case .unsupported(let m): return m
        }
    }
}
