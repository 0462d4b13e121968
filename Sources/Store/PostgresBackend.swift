import Foundation
import Logging
import PostgresNIO

/// PostgreSQL through postgres-nio's `PostgresClient`: a small pool that replaces connections the
/// server or the network closed (a restarted PostgreSQL costs the queries in flight, not the
/// controller), with a keep-alive query on idle connections. Same SQL text as SQLite (`$1`
/// placeholders, TEXT and BIGINT columns).
public final class PostgresBackend: SQLBackend {
    public let kind = "postgres"
    let client: PostgresClient
    let running: Task<Void, Never>
    let logger: Logger

    /// How long the first connection may take before the store gives up (the pool itself retries forever).
    static let connectTimeout: Duration = .seconds(15)

    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (TLS is not negotiated: use a local socket
    /// or a trusted network until the trust issue adds it).
    public init(url: String, logger: Logger) async throws {
        guard let u = URLComponents(string: url), let host = u.host, !host.isEmpty else {
            throw StoreError.unsupported("--database: \(Store.redacted(url)) is not a postgres://user@host[:port]/database URL")
        }
        let database = u.path.hasPrefix("/") ? String(u.path.dropFirst()) : u.path
        var config = PostgresClient.Configuration(
            host: host, port: u.port ?? 5432, username: u.user ?? "postgres", password: u.password,
            database: database.isEmpty ? nil : database, tls: .disable)
        config.options.maximumConnections = 4
        config.options.keepAliveBehavior = .init(frequency: .seconds(10))
        let client = PostgresClient(configuration: config, backgroundLogger: logger)
        self.client = client
        self.logger = logger
        running = Task { await client.run() }
        // The server must answer once at start: a wrong URL is an error now, not a hang.
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.query("SELECT 1", logger: logger) }
                group.addTask {
                    try await Task.sleep(for: Self.connectTimeout)
                    throw StoreError.unsupported("--database: no answer from \(host):\(u.port ?? 5432) within \(Self.connectTimeout)")
                }
                try await group.next()
                group.cancelAll()
            }
        } catch {
            running.cancel()
            await running.value
            throw error
        }
    }

    static func bindings(_ binds: [SQLValue]) throws -> PostgresBindings {
        var b = PostgresBindings()
        for v in binds {
            switch v {
            case .int(let i): try b.append(i)
            case .text(let s): try b.append(s)
            case .null: b.appendNull()
            }
        }
        return b
    }

    public func execute(_ sql: String, _ binds: [SQLValue]) async throws {
        // Drained, so the connection goes back to the pool at once.
        for try await _ in try await client.query(PostgresQuery(unsafeSQL: sql, binds: try Self.bindings(binds)), logger: logger) {}
    }

    public func transaction(_ statements: [(sql: String, binds: [SQLValue])]) async throws {
        let logger = self.logger
        try await client.withTransaction(logger: logger) { connection in
            for s in statements {
                try await connection.query(PostgresQuery(unsafeSQL: s.sql, binds: try Self.bindings(s.binds)), logger: logger)
            }
        }
    }

    public func query(_ sql: String, _ binds: [SQLValue]) async throws -> [SQLRow] {
        let rows = try await client.query(PostgresQuery(unsafeSQL: sql, binds: try Self.bindings(binds)), logger: logger)
        var out: [SQLRow] = []
        for try await row in rows {
            var r: SQLRow = [:]
            for cell in row {
                if cell.bytes == nil {
                    r[cell.columnName] = .null
                    continue
                }
                switch cell.dataType {
                case .int8, .int4, .int2: r[cell.columnName] = .int(try cell.decode(Int64.self))
                default: r[cell.columnName] = .text(try cell.decode(String.self))
                }
            }
            out.append(r)
        }
        return out
    }

    public func close() async throws {
        running.cancel()
        await running.value
    }
}
