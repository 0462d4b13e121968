import Crypto
import FoundationEssentials
import Glibc
import NIOSSL
import SwiftASN1
import SystemFiles
import X509

/// The cluster's certificate authority: one P-256 key and a self-signed CA certificate (ten years) in
/// the controller's `pki` directory. It issues every daemon's identity, each with its role in the
/// subject's organizational unit (`IdentityRole`): the controller's (server and client: it serves the
/// CLI and calls the agents), each host's (server, and client for libvirt's peer-to-peer migrations),
/// and operators' client certificates. Agents serve only controller and operator identities of this CA
/// (`ClientAuthorizer`): a host's certificate, or a stolen agent key, cannot drive another agent.
public struct ClusterCA: Sendable {
    public let certificate: Certificate
    let key: P256.Signing.PrivateKey
    public let directory: String

    public var certificatePath: String { directory + "/ca.crt" }
    public var certificatePEM: String { (try? certificate.serializeAsPEM().pemString) ?? "" }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
        init(_ d: String) { description = d }
    }

    /// Loads the CA from `directory`, creating it (once) when absent.
    public static func loadOrCreate(directory: String, name: String = "vsphere cluster CA", now: Date = Date()) throws -> ClusterCA {
        let fm = FileManager.default
        let crt = directory + "/ca.crt", keyPath = directory + "/ca.key"
        if fm.fileExists(atPath: crt) || fm.fileExists(atPath: keyPath) { return try load(directory: directory) }
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName {
            OrganizationName("vsphere")
            CommonName(name)
        }
        let cert = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(10 * 365 * 86400),
            issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: .init(key.publicKey))
            },
            issuerPrivateKey: .init(key))
        // The key first, private from the start; the certificate marks the CA as complete.
        try replace(keyPath, key.pemRepresentation, mode: 0o600)
        try replace(crt, try cert.serializeAsPEM().pemString, mode: 0o644)
        return ClusterCA(certificate: cert, key: key, directory: directory)
    }

    public static func load(directory: String) throws -> ClusterCA {
        let crt = directory + "/ca.crt", keyPath = directory + "/ca.key"
        guard let certText = TextFile.read(crt) else { throw Failure("no cluster CA certificate at \(crt)") }
        guard let keyText = TextFile.read(keyPath) else { throw Failure("no cluster CA key at \(keyPath)") }
        let cert = try Certificate(pemEncoded: certText)
        let key = try P256.Signing.PrivateKey(pemRepresentation: keyText)
        guard cert.publicKey == Certificate.PublicKey(key.publicKey) else { throw Failure("\(keyPath) is not the key of \(crt)") }
        return ClusterCA(certificate: cert, key: key, directory: directory)
    }

    /// An identity signed by the CA for `commonName` in `role`, valid `days` days, with every name as a
    /// subject alternative name (DNS names and IP addresses).
    /// Returns the certificate chain (leaf, then CA) and the new private key, both PEM.
    public func issue(commonName: String, names: [String], role: IdentityRole, days: Int = 365, now: Date = Date()) throws -> (chain: String, key: String) {
        let key = P256.Signing.PrivateKey()
        let leaf = try sign(publicKey: .init(key.publicKey), commonName: commonName, names: names, role: role, days: days, now: now)
        return (try leaf.serializeAsPEM().pemString + "\n" + certificatePEM, key.pemRepresentation)
    }

    /// Signs a certificate for a public key the holder keeps (a joining host's).
    public func sign(
        publicKey: Certificate.PublicKey, commonName: String, names: [String], role: IdentityRole, days: Int = 365, now: Date = Date()
    ) throws -> Certificate {
        guard (1...3650).contains(days) else { throw Failure("validity must be 1 to 3650 days") }
        return try LeafCertificate.make(
            publicKey: publicKey, commonName: commonName, names: names, role: role, issuer: certificate, issuerKey: key,
            notBefore: now.addingTimeInterval(-3600), notAfter: now.addingTimeInterval(Double(days) * 86400))
    }

    /// Writes an issued identity as `DIR/PREFIX.crt`, `DIR/PREFIX.key` (0600) and `DIR/cluster-ca.crt`.
    /// The key goes first and every file is replaced atomically, so a daemon reloading finds a whole pair.
    public func write(_ identity: (chain: String, key: String), to dir: String, prefix: String) throws -> TLSIdentity {
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try Self.replace(dir + "/\(prefix).key", identity.key, mode: 0o600)
        try Self.replace(dir + "/\(prefix).crt", identity.chain, mode: 0o644)
        try Self.replace(dir + "/cluster-ca.crt", certificatePEM, mode: 0o644)
        return TLSIdentity(certificatePath: dir + "/\(prefix).crt", keyPath: dir + "/\(prefix).key", caPath: dir + "/cluster-ca.crt")
    }

    /// Replaces a file atomically (a new file renamed over it): readers see the old text or the new.
    public static func replace(_ path: String, _ text: String, mode: Int) throws {
        do { try TextFile.replace(path, text, mode: mode_t(mode)) } catch { throw Failure(error.description) }
    }

    /// The leaf (first certificate) of a PEM chain file.
    public static func leaf(ofPEMFile path: String) -> Certificate? {
        guard let text = TextFile.read(path),
            let first = try? PEMDocument.parseMultiple(pemString: text).first
        else { return nil }
        return try? Certificate(derEncoded: first.derBytes)
    }

    /// When a PEM certificate (the leaf of a chain file) stops being valid.
    public static func notValidAfter(ofPEMFile path: String) -> Date? { leaf(ofPEMFile: path)?.notValidAfter }
}

extension TLSIdentity {
    /// Server side of mutual TLS: clients must present a certificate; BoringSSL's own checks are replaced
    /// by a `ClientAuthorizer` (chain to the cluster CA, client usage, an allowed role), which the server
    /// installs as its custom verification callback.
    public func mutualServerConfiguration(clientCA: String) throws -> TLSConfiguration {
        var tls = try serverConfiguration()
        tls.certificateVerification = .noHostnameVerification
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(clientCA))
        return tls
    }

    /// Client side: trusts `ca` (and `also`) only, and presents this identity.
    public func clientConfiguration(trusting ca: String, also: [String] = []) throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        var roots = try NIOSSLCertificate.fromPEMFile(ca)
        for path in also { roots += try NIOSSLCertificate.fromPEMFile(path) }
        tls.trustRoots = .certificates(roots)
        tls.certificateChain = try NIOSSLCertificate.fromPEMFile(certificatePath).map { .certificate($0) }
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyPath, format: .pem))
        tls.minimumTLSVersion = .tlsv12
        return tls
    }
}

/// Joining a host: the host makes its key and a certificate signing request; the controller, given a
/// one-time token, signs the request's key. The host's private key never leaves it.
public enum HostJoin {
    /// A new P-256 key and a CSR for `commonName`, both PEM.
    public static func request(commonName: String) throws -> (csr: String, key: String) {
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName {
            OrganizationName("vsphere")
            CommonName(commonName)
        }
        let csr = try CertificateSigningRequest(
            version: .v1, subject: subject, privateKey: .init(key), attributes: .init(), signatureAlgorithm: .ecdsaWithSHA256)
        return (try csr.serializeAsPEM().pemString, key.pemRepresentation)
    }

    /// The CSR's public key, once its signature proves the sender holds the private key.
    public static func verifiedKey(csrPEM: String) throws -> Certificate.PublicKey {
        let csr = try CertificateSigningRequest(pemEncoded: csrPEM)
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else { throw ClusterCA.Failure("the request's signature does not match its key") }
        return csr.publicKey
    }

    /// SHA-256 of a PEM certificate's DER bytes, lowercase hex: what an operator pins.
    public static func fingerprint(pem: String) throws -> String {
        Hex.encode(SHA256.hash(data: try PEMDocument(pemString: pem).derBytes))
    }
}
