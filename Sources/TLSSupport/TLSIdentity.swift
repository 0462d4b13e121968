import Crypto
import FoundationEssentials
import Glibc
import NIOSSL
import SwiftASN1
import X509

/// A daemon's TLS identity: a certificate chain and its key, issued by the cluster CA (`ClusterCA`).
/// `selfSigned` remains for tools that need a throwaway one-host CA (tests of refusal).
public struct TLSIdentity: Sendable {
    public var certificatePath: String
    public var keyPath: String

    /// The CA certificate the identity chains to.
    public var caPath: String?

    public init(certificatePath: String, keyPath: String, caPath: String?) {
        self.certificatePath = certificatePath
        self.keyPath = keyPath
        self.caPath = caPath
    }

    /// Loads the configured certificate, or creates (once) a host CA and a server certificate it signs
    /// for `names` (host names and IP addresses).
    public static func loadOrCreate(
        dataDir: String, certificate: String? = nil, key: String? = nil, names: [String], prefix: String
    ) throws -> TLSIdentity {
        if let certificate, let key {
            return TLSIdentity(certificatePath: certificate, keyPath: key, caPath: nil)
        }
        let dir = dataDir + "/tls"
        let identity = TLSIdentity(
            certificatePath: dir + "/\(prefix).crt", keyPath: dir + "/\(prefix).key", caPath: dir + "/\(prefix)-ca.crt")
        let fm = FileManager.default
        if fm.fileExists(atPath: identity.certificatePath) && fm.fileExists(atPath: identity.keyPath) {
            return identity
        }
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let made = try selfSigned(names: names, label: prefix)
        try ClusterCA.replace(identity.keyPath, made.key, mode: 0o600)
        try ClusterCA.replace(identity.caPath!, made.ca, mode: 0o644)
        try ClusterCA.replace(identity.certificatePath, made.certificate, mode: 0o644)
        return identity
    }

    /// A one-host CA (P-256, ten years; its key is discarded once used) and a server certificate it
    /// signs, valid for a year, with every name as a subject alternative name.
    public static func selfSigned(names: [String], label: String = "vsphere", role: IdentityRole = .host, now: Date = Date()) throws -> (ca: String, certificate: String, key: String) {
        let caKey = P256.Signing.PrivateKey()
        let common = names.first ?? label
        let caName = try DistinguishedName {
            OrganizationName("vsphere")
            CommonName("\(label) CA for \(common)")
        }
        let caCert = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(caKey.publicKey),
            notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(10 * 365 * 86400),
            issuer: caName, subject: caName, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: .init(caKey.publicKey))
            },
            issuerPrivateKey: .init(caKey))

        let key = P256.Signing.PrivateKey()
        let cert = try LeafCertificate.make(
            publicKey: .init(key.publicKey), commonName: common, names: names, role: role, issuer: caCert, issuerKey: caKey,
            notBefore: now.addingTimeInterval(-3600), notAfter: now.addingTimeInterval(365 * 86400))
        let caPEM = try caCert.serializeAsPEM().pemString
        return (caPEM, try cert.serializeAsPEM().pemString + "\n" + caPEM, key.pemRepresentation)
    }

    public func serverConfiguration() throws -> TLSConfiguration {
        let chain = try NIOSSLCertificate.fromPEMFile(certificatePath).map { NIOSSLCertificateSource.certificate($0) }
        let key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        tls.minimumTLSVersion = .tlsv12
        return tls
    }

    static func ipBytes(_ s: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, s, &v4) == 1 { return withUnsafeBytes(of: v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, s, &v6) == 1 { return withUnsafeBytes(of: v6) { Array($0) } }
        return nil
    }
}
