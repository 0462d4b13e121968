import Crypto
import Foundation
import NIOSSL
import SwiftASN1
import X509

/// The agent's TLS identity. Until the cluster CA arrives (trust issue) the agent makes itself a
/// self-signed certificate, kept in its data directory so clients can pin it across restarts.
public struct TLSIdentity: Sendable {
    public var certificatePath: String
    public var keyPath: String

    /// Loads the configured certificate, or creates (once) a self-signed one for `names`
    /// (host names and IP addresses).
    public static func loadOrCreate(config: AgentConfig, names: [String]) throws -> TLSIdentity {
        if let cert = config.tlsCertificate, let key = config.tlsKey {
            return TLSIdentity(certificatePath: cert, keyPath: key)
        }
        let dir = config.dataDir + "/tls"
        let identity = TLSIdentity(certificatePath: dir + "/agent.crt", keyPath: dir + "/agent.key")
        let fm = FileManager.default
        if fm.fileExists(atPath: identity.certificatePath) && fm.fileExists(atPath: identity.keyPath) {
            return identity
        }
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let (certPEM, keyPEM) = try selfSigned(names: names)
        fm.createFile(atPath: identity.keyPath, contents: Data(keyPEM.utf8), attributes: [.posixPermissions: 0o600])
        fm.createFile(atPath: identity.certificatePath, contents: Data(certPEM.utf8), attributes: [.posixPermissions: 0o644])
        return identity
    }

    /// A P-256 self-signed server certificate valid for a year, with every name as a subject alt name.
    public static func selfSigned(names: [String], now: Date = Date()) throws -> (certificate: String, key: String) {
        let key = P256.Signing.PrivateKey()
        let common = names.first ?? "vsphere-agent"
        let subject = try DistinguishedName {
            OrganizationName("vsphere")
            CommonName(common)
        }
        var alt: [GeneralName] = []
        for n in Set(names).sorted() {
            if let ip = ipBytes(n) {
                alt.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(ip))))
            } else {
                alt.append(.dnsName(n))
            }
        }
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true, keyEncipherment: true))
            try ExtendedKeyUsage([.serverAuth, .clientAuth])
            SubjectAlternativeNames(alt)
        }
        let cert = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(365 * 86400),
            issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions,
            issuerPrivateKey: .init(key))
        return (try cert.serializeAsPEM().pemString, key.pemRepresentation)
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
