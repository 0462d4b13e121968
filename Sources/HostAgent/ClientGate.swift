import AgentAPI
import ClusterModel
import FoundationEssentials
import Glibc
import Logging
import NIOSSL
import Synchronization
import SystemFiles
import TLSSupport

/// Who may call this agent: the TLS handshake's custom verification (installed by `AgentServer`).
/// Clients must present a certificate of the cluster CA with the controller or operator role; a host's
/// identity (every other agent's, and libvirt's on every host) is refused, and so is any serial number
/// in the revocation list (`dataDir/tls/revoked.txt`, pushed by the controller, re-read when it changes).
public final class ClientGate: Sendable {
    let caPath: String
    public let revokedPath: String
    let logger: Logger
    private let state: Mutex<(authorizer: ClientAuthorizer, revokedStamp: String)>

    public static let allowed: Set<IdentityRole> = [.controller, .operator]

    public init(caPath: String, revokedPath: String, logger: Logger) throws {
        self.caPath = caPath
        self.revokedPath = revokedPath
        self.logger = logger
        let stamp = Self.stamp(revokedPath)
        state = Mutex((try ClientAuthorizer(caFile: caPath, allowed: Self.allowed, revokedFile: revokedPath), stamp))
    }

    /// The revocation list's size and modification time: a change means it is read again.
    static func stamp(_ path: String) -> String {
        var st = stat()
        guard stat(path, &st) == 0 else { return "absent" }
        return "\(st.st_size)-\(st.st_mtim.tv_sec)-\(st.st_mtim.tv_nsec)"
    }

    func current() -> ClientAuthorizer {
        let stamp = Self.stamp(revokedPath)
        return state.withLock { s in
            if s.revokedStamp != stamp, let fresh = try? ClientAuthorizer(caFile: caPath, allowed: Self.allowed, revokedFile: revokedPath) {
                s = (fresh, stamp)
            }
            return s.authorizer
        }
    }

    /// BoringSSL's custom verification: the handshake goes on only for an authorized client.
    public func verify(_ chain: [NIOSSLCertificate]) async -> NIOSSLVerificationResult {
        switch await current().authorize(chain) {
        case .success: return .certificateVerified
        case .failure(let refusal):
            logger.warning("client refused in the TLS handshake", metadata: ["reason": "\(refusal)"])
            return .failed
        }
    }

    /// The serial numbers refused now.
    public func revoked() -> RevokedCertificates {
        RevokedCertificates(serials: current().revoked.sorted())
    }

    /// Replaces the revocation list (atomically: a handshake reads either the old list or the new one).
    public func setRevoked(_ list: RevokedCertificates) throws -> RevokedCertificates {
        var serials: [String] = []
        for (i, s) in list.serials.enumerated() {
            guard let n = ClientAuthorizer.serialNumber(s) else {
                throw AgentError.invalid([ValidationProblem("serials[\(i)]", "must be a certificate serial number in hexadecimal")])
            }
            serials.append(n)
        }
        guard serials.count <= 10_000 else { throw AgentError.invalid([ValidationProblem("serials", "at most 10000")]) }
        let text = "# serial numbers of revoked cluster certificates, written by the controller\n"
            + Set(serials).sorted().map { $0 + "\n" }.joined()
        // The controller pushes the list every 30 s: the same list is not written again (a new file
        // would be parsed again, with the CA, at the next handshake).
        if TextFile.read(revokedPath) != text {
            try? FileManager.default.createDirectory(atPath: URL(fileURLWithPath: revokedPath).deletingLastPathComponent().path, withIntermediateDirectories: true)
            do { try ClusterCA.replace(revokedPath, text, mode: 0o644) } catch { throw AgentError.internalError("cannot write \(revokedPath)") }
        }
        return revoked()
    }
}
