import Crypto
import Foundation

/// Roles, least to most: a viewer reads, an operator also changes the cluster, an admin also manages
/// tokens, joins hosts and reads the audit log.
public enum Role: String, Codable, Sendable, CaseIterable, Comparable {
    case viewer, `operator`, admin
    var rank: Int { Role.allCases.firstIndex(of: self)! }
    public static func < (a: Role, b: Role) -> Bool { a.rank < b.rank }

    /// The role a request needs; nil: anyone (health, the CA, joining with a token).
    public static func required(method: String, path raw: String) -> Role? {
        // The router ignores empty segments (`//v1/tokens`, `/v1/tokens/`): so does this check.
        let path = "/" + raw.split(separator: "/", omittingEmptySubsequences: true).joined(separator: "/")
        if path == "/healthz" || (method == "GET" && path == "/v1/ca") || (method == "POST" && path == "/v1/join") { return nil }
        if path == "/v1/tokens" || path.hasPrefix("/v1/tokens/") || path.hasPrefix("/v1/audit") { return .admin }
        if method == "POST", path.hasPrefix("/v1/hosts/"), path.hasSuffix("/join-token") { return .admin }
        if method == "GET" || method == "HEAD" || (method == "POST" && path == "/v1/plan") { return .viewer }
        return .`operator`
    }
}

/// `POST /v1/tokens`.
public struct TokenRequest: Codable, Sendable {
    public var name: String
    public var role: Role
    public init(name: String, role: Role) {
        self.name = name
        self.role = role
    }
}

/// A user's API token as listed (the secret itself is shown once, at creation).
public struct TokenView: Codable, Sendable, Equatable {
    public var name: String
    public var role: Role
    public var createdMs: Int64
    public var revokedMs: Int64?
    /// Only in the answer to its creation.
    public var token: String?
    public init(name: String, role: Role, createdMs: Int64, revokedMs: Int64?, token: String? = nil) {
        self.name = name
        self.role = role
        self.createdMs = createdMs
        self.revokedMs = revokedMs
        self.token = token
    }
}

/// One entry of the audit log: who did what, and the hash chain that makes tampering visible.
public struct AuditRecord: Codable, Sendable, Equatable {
    public var id: Int64
    public var timeMs: Int64
    public var actor: String
    public var role: String
    public var method: String
    public var path: String
    public var status: Int
    /// The previous record's hash (the genesis value for the first).
    public var prev: String
    public var hash: String
    public init(id: Int64, timeMs: Int64, actor: String, role: String, method: String, path: String, status: Int, prev: String, hash: String) {
        self.id = id
        self.timeMs = timeMs
        self.actor = actor
        self.role = role
        self.method = method
        self.path = path
        self.status = status
        self.prev = prev
        self.hash = hash
    }
}

/// The audit log's chain: each record's hash covers its fields and the previous hash, so changing,
/// removing or reordering a record breaks every hash after it. The hash is an HMAC-SHA256 under a key
/// the controller keeps outside its database (`DATA_DIR/audit.key`): whoever can write the database
/// cannot re-hash a changed tail. Records written before the key existed (ids below `keyedFrom`) carry
/// plain SHA-256 hashes and verify as such.
public enum AuditChain {
    public static let genesis = String(repeating: "0", count: 64)

    public static func hash(
        id: Int64, timeMs: Int64, actor: String, role: String, method: String, path: String, status: Int, prev: String, key: SymmetricKey? = nil
    ) -> String {
        // Length-prefixed fields: no field can be shifted into another.
        let fields = [String(id), String(timeMs), actor, role, method, path, String(status), prev]
        let text = Data(fields.map { "\($0.utf8.count):\($0)" }.joined(separator: "|").utf8)
        if let key { return HMAC<SHA256>.authenticationCode(for: text, using: key).map { String(format: "%02x", $0) }.joined() }
        return SHA256.hash(data: text).map { String(format: "%02x", $0) }.joined()
    }

    public static func hash(of r: AuditRecord, key: SymmetricKey? = nil) -> String {
        hash(id: r.id, timeMs: r.timeMs, actor: r.actor, role: r.role, method: r.method, path: r.path, status: r.status, prev: r.prev, key: key)
    }

    public struct Verdict: Codable, Sendable, Equatable {
        public var ok: Bool
        public var records: Int
        /// The last record's hash: keep it elsewhere to notice a truncated log later.
        public var head: String
        public var brokenAt: Int64?
        public var reason: String?
        public init(ok: Bool, records: Int, head: String, brokenAt: Int64? = nil, reason: String? = nil) {
            self.ok = ok
            self.records = records
            self.head = head
            self.brokenAt = brokenAt
            self.reason = reason
        }
    }

    /// Checks records in id order, as many as come, one page after another: consecutive ids, each
    /// `prev` the hash before it, each hash its own.
    public struct Verifier: Sendable {
        let key: SymmetricKey?
        let keyedFrom: Int64
        var prev = AuditChain.genesis
        var lastID: Int64?
        var count = 0
        /// The first break found; nothing after it is looked at.
        public private(set) var broken: Verdict?

        public init(key: SymmetricKey? = nil, keyedFrom: Int64 = 1) {
            self.key = key
            self.keyedFrom = keyedFrom
        }

        public mutating func add(_ r: AuditRecord) {
            guard broken == nil else { return }
            count += 1
            if let l = lastID, r.id != l + 1 {
                broken = Verdict(ok: false, records: count, head: prev, brokenAt: r.id, reason: "record \(l + 1) is missing")
            } else if r.prev != prev {
                broken = Verdict(ok: false, records: count, head: prev, brokenAt: r.id, reason: "record \(r.id) does not follow the one before it")
            } else if hash(of: r, key: r.id >= keyedFrom ? key : nil) != r.hash {
                broken = Verdict(ok: false, records: count, head: prev, brokenAt: r.id, reason: "record \(r.id) was changed")
            } else {
                prev = r.hash
                lastID = r.id
            }
        }

        public var verdict: Verdict { broken ?? Verdict(ok: true, records: count, head: prev) }
    }

    public static func verify(_ records: [AuditRecord], key: SymmetricKey? = nil, keyedFrom: Int64 = 1) -> Verdict {
        var v = Verifier(key: key, keyedFrom: keyedFrom)
        for r in records { v.add(r) }
        return v.verdict
    }
}
