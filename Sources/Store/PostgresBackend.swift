import Foundation
import Logging
import PostgresNIO

/// PostgreSQL through postgres-nio: one connection, serialized by the Store actor. Same SQL text as
/// SQLite (`$1` placeholders, TEXT and BIGINT columns).
public final class PostgresBackend: SQLBackend {
    public let kind = "postgres"
    let connection: PostgresConnection
    let logger: Logger

    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (TLS is not negotiated: use a local socket
    /// or a trusted network until the trust issue adds it).
    public init(url: String, logger: Logger) async throws {
        guard let u = URLComponents(string: url), let host = u.host, !host.isEmpty else {
            throw StoreError.unsupported("--database: \(Store.redacted(url)) is not a postgres://user@host[:port]/database URL")
        }
        let database = u.path.hasPrefix("/") ? String(u.path.dropFirst()) : u.path
        let config = PostgresConnection.Configuration(
            host: host, port: u.port ?? 5432, username: u.user ?? "postgres", password: u.password,
            database: database.isEmpty ? nil : database, tls: .disable)
        self.logger = logger
        connection = try await PostgresConnection.connect(configuration: config, id: 1, logger: logger)
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
        try await connection.query(PostgresQuery(unsafeSQL: sql, binds: try Self.bindings(binds)), logger: logger)
    }

    public func query(_ sql: String, _ binds: [SQLValue]) async throws -> [SQLRow] {
        let rows = try await connection.query(PostgresQuery(unsafeSQL: sql, binds: try Self.bindings(binds)), logger: logger)
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

    public func close() async throws { try await connection.close() }
}
