import ClusterModel
import ControllerAPI
import Crypto
import Foundation
import ServerSupport
import TLSSupport
import X509

extension Controller {
    static func digest(_ token: String) -> String {
        Hex.encode(SHA256.hash(data: Data(token.utf8)))
    }

    /// A one-time token for a host of the desired state (1 hour by default, at most a week). The names
    /// its certificate will carry are fixed now: the host's name and the address of its agent URL. A
    /// name the controller's own certificate carries is refused: a host must not be able to pose as the
    /// controller to the CLI.
    public func joinToken(host: String, ttlSeconds: Int?) async throws -> JoinToken {
        guard let ca else { throw Conflict("this controller has no cluster CA") }
        let ttl = ttlSeconds ?? 3600
        guard (60...7 * 86400).contains(ttl) else { throw ValidationFailure([ValidationProblem("ttlSeconds", "must be between 60 and 604800")]) }
        guard let spec = (try await desired().hosts ?? []).first(where: { $0.name == host }) else {
            throw ControllerServer.NotFound(what: "host \(host) in the desired state (apply it first)")
        }
        var names = [host]
        if let agent = spec.agent, let h = URLComponents(string: agent)?.host, !h.isEmpty { names.append(h.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))) }
        let taken = Set(controllerNames.map { $0.lowercased() })
        if let clash = names.first(where: { taken.contains($0.lowercased()) }) {
            throw Conflict("host \(host): \(clash) is a name of the controller's own certificate; a host's certificate may not carry it")
        }
        let token = Self.newSecret()
        let expires = Int64(Date().timeIntervalSince1970 * 1000) + Int64(ttl) * 1000
        try await store.addJoinToken(digest: Self.digest(token), host: host, names: names, expiresMs: expires)
        try await store.addEvent(source: "controller", kind: "host", name: host, event: "join-token", detail: nil, message: "valid for \(ttl) s")
        return JoinToken(host: host, token: token, expiresMs: expires, caFingerprint: try HostJoin.fingerprint(pem: ca.certificatePEM))
    }

    /// Signs a joining host's key: the token must be unused, unexpired and made for that host. The
    /// certificate (role host: it cannot drive agents) carries the names fixed with the token.
    public func join(_ req: JoinRequest) async throws -> JoinResponse {
        guard let ca else { throw Conflict("this controller has no cluster CA") }
        guard Names.isValid(req.host) else { throw ValidationFailure([ValidationProblem("host", "must match ^[a-z][a-z0-9-]{0,62}$")]) }
        let key: Certificate.PublicKey
        do { key = try HostJoin.verifiedKey(csrPEM: req.csr) } catch {
            throw ValidationFailure([ValidationProblem("csr", "must be a PEM certificate signing request signed by its key (\(error))")])
        }
        guard let (host, names) = try await store.useJoinToken(digest: Self.digest(req.token)), host == req.host else {
            let (record, before) = refusedJoins.take()
            if before > 0 {
                try await store.addEvent(source: "controller", kind: "host", name: nil, event: "join-refused", detail: nil, message: "\(before) more refused joins in the minute before, not recorded one by one")
            }
            if record {
                try await store.addEvent(source: "controller", kind: "host", name: req.host, event: "join-refused", detail: nil, message: "unknown, used or expired token")
            }
            throw Unauthorized("the token is unknown, used, expired or for another host")
        }
        let cert = try ca.sign(publicKey: key, commonName: host, names: names, role: .host)
        try await store.addEvent(source: "controller", kind: "host", name: host, event: "joined", detail: nil, message: "certificate issued for \(names.joined(separator: ", "))")
        return JoinResponse(certificate: try cert.serializeAsPEM().pemString + "\n" + ca.certificatePEM, ca: ca.certificatePEM)
    }
}

/// A request without valid credentials (HTTP 401).
public struct Unauthorized: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}
