import ClusterModel
import ControllerAPI
import Crypto
import Foundation
import TLSSupport
import X509

extension Controller {
    static func digest(_ token: String) -> String {
        SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// A one-time token for a host of the desired state (1 hour by default, at most a week).
    public func joinToken(host: String, ttlSeconds: Int?) async throws -> JoinToken {
        guard let ca else { throw Conflict("this controller has no cluster CA") }
        let ttl = ttlSeconds ?? 3600
        guard (60...7 * 86400).contains(ttl) else { throw ValidationFailure([ValidationProblem("ttlSeconds", "must be between 60 and 604800")]) }
        guard (try await desired().hosts ?? []).contains(where: { $0.name == host }) else {
            throw ControllerServer.NotFound(what: "host \(host) in the desired state (apply it first)")
        }
        var bytes = [UInt8](repeating: 0, count: 32)
        // SystemRandomNumberGenerator: the kernel's getrandom.
        for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255) }
        let token = bytes.map { String(format: "%02x", $0) }.joined()
        let expires = Int64(Date().timeIntervalSince1970 * 1000) + Int64(ttl) * 1000
        try await store.addJoinToken(digest: Self.digest(token), host: host, expiresMs: expires)
        try await store.addEvent(source: "controller", kind: "host", name: host, event: "join-token", detail: nil, message: "valid for \(ttl) s")
        return JoinToken(host: host, token: token, expiresMs: expires, caFingerprint: try HostJoin.fingerprint(pem: ca.certificatePEM))
    }

    /// Signs a joining host's key: the token must be unused, unexpired and made for that host. The
    /// certificate names the host and the address of its agent URL in the desired state.
    public func join(_ req: JoinRequest) async throws -> JoinResponse {
        guard let ca else { throw Conflict("this controller has no cluster CA") }
        guard Names.isValid(req.host) else { throw ValidationFailure([ValidationProblem("host", "must match ^[a-z][a-z0-9-]{0,62}$")]) }
        let key: Certificate.PublicKey
        do { key = try HostJoin.verifiedKey(csrPEM: req.csr) } catch {
            throw ValidationFailure([ValidationProblem("csr", "must be a PEM certificate signing request signed by its key (\(error))")])
        }
        guard let host = try await store.useJoinToken(digest: Self.digest(req.token)), host == req.host else {
            try await store.addEvent(source: "controller", kind: "host", name: req.host, event: "join-refused", detail: nil, message: "unknown, used or expired token")
            throw Unauthorized("the token is unknown, used, expired or for another host")
        }
        var names = [host]
        if let agent = (try await desired().hosts ?? []).first(where: { $0.name == host })?.agent,
            let h = URLComponents(string: agent)?.host
        {
            names.append(h)
        }
        let cert = try ca.sign(publicKey: key, commonName: host, names: names)
        try await store.addEvent(source: "controller", kind: "host", name: host, event: "joined", detail: nil, message: "certificate issued for \(names.joined(separator: ", "))")
        return JoinResponse(certificate: try cert.serializeAsPEM().pemString + "\n" + ca.certificatePEM, ca: ca.certificatePEM)
    }
}

/// A request without valid credentials (HTTP 401).
public struct Unauthorized: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}
