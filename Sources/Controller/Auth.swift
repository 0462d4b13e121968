import ClusterModel
import ControllerAPI
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Store
import SystemFiles
import Synchronization
import TLSSupport

extension Controller {
    static func newSecret() -> String {
        // SystemRandomNumberGenerator: the kernel's getrandom.
        Hex.encode((0..<32).map { _ in UInt8.random(in: 0...255) })
    }

    /// The first admin: when the store has no live admin token, one named `admin` is made and written to
    /// `tokenFile` (mode 0600) for the operator to pick up. Returns whether it made one.
    @discardableResult
    public func bootstrapAdmin(tokenFile: String) async throws -> Bool {
        if try await store.apiTokens().contains(where: { $0.role == Role.admin.rawValue && $0.revokedMs == nil }) { return false }
        let token = Self.newSecret()
        try await store.addAPIToken(digest: Self.digest(token), name: "admin", role: Role.admin.rawValue)
        do { try TextFile.replace(tokenFile, token + "\n", mode: 0o600) } catch { throw Conflict(error.description) }
        try await store.addEvent(source: "controller", kind: "token", name: "admin", event: "created", detail: nil, message: "first admin token in \(tokenFile)")
        return true
    }

    public func createToken(_ req: TokenRequest) async throws -> TokenView {
        guard req.name.count <= 64, !req.name.isEmpty, req.name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.@".contains($0) }) else {
            throw ValidationFailure([ValidationProblem("name", "1 to 64 letters, digits, -, _, . or @")])
        }
        let token = Self.newSecret()
        try await store.addAPIToken(digest: Self.digest(token), name: req.name, role: req.role.rawValue)
        return TokenView(name: req.name, role: req.role, createdMs: Int64(Date().timeIntervalSince1970 * 1000), revokedMs: nil, token: token)
    }

    public func tokenViews() async throws -> [TokenView] {
        try await store.apiTokens().map { TokenView(name: $0.name, role: Role(rawValue: $0.role) ?? .viewer, createdMs: $0.createdMs, revokedMs: $0.revokedMs) }
    }

    public func revokeTokens(name: String) async throws -> Int {
        let n = try await store.revokeAPITokens(name: name)
        authCache.withLock { $0 = [:] }
        return n
    }

    /// Who holds `token`, and in which role (known tokens cached for two seconds; revocation clears the
    /// cache). Unknown tokens are not cached: a caller trying tokens cannot grow the cache.
    func authenticate(_ token: String) async throws -> (name: String, role: Role)? {
        let digest = Self.digest(token)
        let now = ContinuousClock.now
        if let hit = authCache.withLock({ $0[digest] }), now - hit.at < .seconds(2) { return hit.who }
        let who = try await store.apiToken(digest: digest).map { ($0.name, Role(rawValue: $0.role) ?? .viewer) }
        if let who {
            authCache.withLock { cache in
                if cache.count >= 1024 { cache = cache.filter { now - $0.value.at < .seconds(2) } }
                cache[digest] = (who, now)
            }
        }
        return who
    }

    /// Records a refused anonymous call, within the per-minute budget.
    func auditAnonymous(method: String, path: String) async {
        let (record, suppressedBefore) = anonymousAudit.take()
        if suppressedBefore > 0 {
            await audit(actor: "anonymous", role: "-", method: "-", path: "(\(suppressedBefore) more refused anonymous calls in the minute before, not recorded one by one)", status: 401)
        }
        if record { await audit(actor: "anonymous", role: "-", method: method, path: path, status: 401) }
    }

    /// Records a call in the audit log; throws when the record could not be stored.
    func appendAudit(actor: String, role: String, method: String, path: String, status: Int) async throws {
        let key = auditKey
        try await store.appendAudit(actor: actor, role: role, method: method, path: path, status: status, genesis: AuditChain.genesis) { e in
            AuditChain.hash(
                id: e.id, timeMs: e.timeMs, actor: e.actor, role: e.role, method: e.method, path: e.path, status: e.status, prev: e.prev,
                key: e.id >= key.keyedFrom ? key.key : nil)
        }
    }

    /// Records a refusal or an outcome; a record that cannot be stored is logged and raises an alarm
    /// (the call it records was refused, or was already recorded as begun).
    func audit(actor: String, role: String, method: String, path: String, status: Int) async {
        do {
            try await appendAudit(actor: actor, role: role, method: method, path: path, status: status)
        } catch {
            logger.error("audit record lost", metadata: ["error": "\(error)", "actor": "\(actor)", "path": "\(path)"])
            await raise("audit-write", kind: "audit", name: nil, host: nil, message: "an audit record could not be written (\(method) \(path) by \(actor), status \(status)): \(error)")
        }
    }

    public func auditRecords(after: Int64, limit: Int = 100_000) async throws -> [AuditRecord] {
        try await store.auditLog(after: after, limit: limit).map {
            AuditRecord(id: $0.id, timeMs: $0.timeMs, actor: $0.actor, role: $0.role, method: $0.method, path: $0.path, status: $0.status, prev: $0.prev, hash: $0.hash)
        }
    }

    /// Verifies the whole audit log, page by page (it may hold millions of records).
    public func verifyAudit(pageSize: Int = 10_000) async throws -> AuditChain.Verdict {
        var v = AuditChain.Verifier(key: auditKey.key, keyedFrom: auditKey.keyedFrom)
        var after: Int64 = 0
        while v.broken == nil {
            let page = try await auditRecords(after: after, limit: pageSize)
            for r in page { v.add(r) }
            guard let last = page.last, page.count == pageSize else { break }
            after = last.id
        }
        return v.verdict
    }
}

/// The audit chain's HMAC key and the first record it covers, in a file of the controller's data
/// directory (0600) and never in its database.
public struct AuditKey: Sendable {
    public let key: SymmetricKey
    /// Records with lower ids predate the key (plain SHA-256).
    public let keyedFrom: Int64

    /// A key of this process only (tests).
    public init() {
        key = SymmetricKey(size: .bits256)
        keyedFrom = 1
    }

    init(key: SymmetricKey, keyedFrom: Int64) {
        self.key = key
        self.keyedFrom = keyedFrom
    }

    public struct Problem: Error, CustomStringConvertible {
        public var description: String
    }

    /// Reads the key file, or makes it: a new key covers the records from `nextID` on.
    public static func loadOrCreate(path: String, nextID: Int64) throws -> AuditKey {
        if let text = TextFile.read(path) {
            let fields = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
            guard fields.count == 2, let bytes = Hex.decode(String(fields[0])), bytes.count == 32, let from = Int64(fields[1]), from >= 1 else {
                throw Problem(description: "\(path): not an audit key (64 hex digits and the first record it covers)")
            }
            return AuditKey(key: SymmetricKey(data: bytes), keyedFrom: from)
        }
        guard !FileManager.default.fileExists(atPath: path) else { throw Problem(description: "\(path): cannot be read") }
        let key = SymmetricKey(size: .bits256)
        let hex = key.withUnsafeBytes { Hex.encode($0) }
        do { try TextFile.replace(path, "\(hex) \(nextID)\n", mode: 0o600) } catch { throw Problem(description: error.description) }
        return AuditKey(key: key, keyedFrom: nextID)
    }
}

extension AuthMiddleware {
    static func tooMany() -> Response {
        var r = Response.json(429, APIError(error: "too many requests without credentials from this address; retry in a second"))
        r.headers[.retryAfter] = "1"
        return r
    }
}

/// Every request but health, the CA and joining needs `Authorization: Bearer TOKEN` (401 without a
/// valid one) and a role that allows it (403 otherwise, `Role.required`). Every call that is not a read
/// is recorded in the audit log with who made it and how it ended, refused ones included.
struct AuthMiddleware: RouterMiddleware {
    typealias Context = ControllerContext
    let controller: Controller

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        let method = request.method.rawValue
        let path = request.uri.path
        let client = context.remoteAddress ?? "unknown"
        guard let need = Role.required(method: method, path: path) else {
            // Open to anyone (health, the CA, joining): rate limited per client.
            guard controller.openRoutes.allow(client) else { return Self.tooMany() }
            return try await next(request, context)
        }
        let mutating = !(method == "GET" || method == "HEAD" || (method == "POST" && path == "/v1/plan"))
        var who: (name: String, role: Role)?
        if let header = request.headers[.authorization], header.hasPrefix("Bearer ") {
            who = try? await controller.authenticate(String(header.dropFirst("Bearer ".count)).trimmingCharacters(in: .whitespaces))
        }
        guard let who else {
            // Guessing tokens costs a token of the client's bucket.
            guard controller.openRoutes.allow(client) else { return Self.tooMany() }
            if mutating { await controller.auditAnonymous(method: method, path: path) }
            var r = Response.json(401, APIError(error: "credentials required: Authorization: Bearer TOKEN (vsphere-ctl --token, VSPHERE_TOKEN or the config's token)"))
            r.headers[.wwwAuthenticate] = "Bearer realm=\"vsphere\""
            return r
        }
        guard who.role >= need else {
            if mutating { await controller.audit(actor: who.name, role: who.role.rawValue, method: method, path: path, status: 403) }
            return Response.json(403, APIError(error: "\(who.name) is a \(who.role.rawValue); \(method) \(path) needs \(need.rawValue)"))
        }
        context.actor = who.name
        if mutating {
            // Recorded before it runs: a change the log cannot hold is not made.
            do {
                try await controller.appendAudit(actor: who.name, role: who.role.rawValue, method: method, path: path, status: 0)
            } catch {
                controller.logger.error("audit log unwritable; call refused", metadata: ["error": "\(error)", "path": "\(path)"])
                return Response.json(503, APIError(error: "the audit log cannot be written (\(error)); nothing was done"))
            }
        }
        do {
            let response = try await next(request, context)
            if mutating { await controller.audit(actor: who.name, role: who.role.rawValue, method: method, path: path, status: Int(response.status.code)) }
            return response
        } catch {
            if mutating { await controller.audit(actor: who.name, role: who.role.rawValue, method: method, path: path, status: 500) }
            throw error
        }
    }
}

/// The controller's request context: the authenticated user, for handlers that record who acted.
public struct ControllerContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var actor: String?
    /// The client's address (rate limits of calls without credentials).
    public var remoteAddress: String?
    public init(source: Source) {
        coreContext = .init(source: source)
        actor = nil
        remoteAddress = source.channel.remoteAddress?.ipAddress
    }
}
