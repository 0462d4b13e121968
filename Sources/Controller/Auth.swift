import ClusterModel
import ControllerAPI
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

    /// At most this many refused anonymous calls are recorded per minute; the rest are counted and the
    /// count recorded once the minute is over (a flood of unauthenticated calls must not grow the audit
    /// log without bound, nor go unseen).
    static let anonymousAuditPerMinute = 60

    /// Records a refused anonymous call, within the per-minute budget.
    func auditAnonymous(method: String, path: String) async {
        let now = ContinuousClock.now
        let (record, suppressedBefore) = anonymousAudit.withLock { w -> (Bool, Int) in
            var carried = 0
            if now - w.start >= .seconds(60) {
                carried = w.suppressed
                w = (now, 0, 0)
            }
            if w.written < Self.anonymousAuditPerMinute {
                w.written += 1
                return (true, carried)
            }
            w.suppressed += 1
            return (false, carried)
        }
        if suppressedBefore > 0 {
            await audit(actor: "anonymous", role: "-", method: "-", path: "(\(suppressedBefore) more refused anonymous calls in the minute before, not recorded one by one)", status: 401)
        }
        if record { await audit(actor: "anonymous", role: "-", method: method, path: path, status: 401) }
    }

    /// Records a mutating call (or a refused one) in the hash-chained audit log.
    func audit(actor: String, role: String, method: String, path: String, status: Int) async {
        do {
            try await store.appendAudit(actor: actor, role: role, method: method, path: path, status: status, genesis: AuditChain.genesis) { e in
                AuditChain.hash(id: e.id, timeMs: e.timeMs, actor: e.actor, role: e.role, method: e.method, path: e.path, status: e.status, prev: e.prev)
            }
        } catch {
            logger.error("audit record lost", metadata: ["error": "\(error)", "actor": "\(actor)", "path": "\(path)"])
        }
    }

    public func auditRecords(after: Int64) async throws -> [AuditRecord] {
        try await store.auditLog(after: after).map {
            AuditRecord(id: $0.id, timeMs: $0.timeMs, actor: $0.actor, role: $0.role, method: $0.method, path: $0.path, status: $0.status, prev: $0.prev, hash: $0.hash)
        }
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
        guard let need = Role.required(method: method, path: path) else { return try await next(request, context) }
        let mutating = !(method == "GET" || method == "HEAD" || (method == "POST" && path == "/v1/plan"))
        var who: (name: String, role: Role)?
        if let header = request.headers[.authorization], header.hasPrefix("Bearer ") {
            who = try? await controller.authenticate(String(header.dropFirst("Bearer ".count)).trimmingCharacters(in: .whitespaces))
        }
        guard let who else {
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
    public init(source: Source) {
        coreContext = .init(source: source)
        actor = nil
    }
}
