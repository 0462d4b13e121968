import ClusterModel
import Crypto
import FoundationEssentials
import NIOSSL
import SwiftASN1
import SystemFiles
import X509

/// What a certificate of the cluster CA is for, written in its subject's organizational unit.
public enum IdentityRole: String, CaseIterable, Sendable, Codable {
    /// The controller: serves the API and the CLI, drives agents.
    case controller
    /// A person or tool allowed to drive agents directly (the testbed's scripts, break-glass access).
    case `operator`
    /// A host: its agent's server certificate and libvirt's/QEMU's identity for migrations. It may not
    /// drive other agents.
    case host

    /// Extended key usages: operators are clients only; the controller and hosts serve and call.
    var usages: [ExtendedKeyUsage.Usage] {
        switch self {
        case .controller, .host: [.serverAuth, .clientAuth]
        case .operator: [.clientAuth]
        }
    }

    /// The role a certificate states (its subject's organizational unit), if it names one of these.
    public init?(of certificate: Certificate) {
        for rdn in certificate.subject {
            for attribute in rdn where attribute.type == .RDNAttributeType.organizationalUnitName {
                if let role = IdentityRole(rawValue: attribute.value.description) { self = role; return }
            }
        }
        return nil
    }
}

/// The one place leaf certificates are made (the cluster CA's, and throwaway one-host CAs' in tools).
enum LeafCertificate {
    static func make(
        publicKey: Certificate.PublicKey, commonName: String, names: [String], role: IdentityRole,
        issuer: Certificate, issuerKey: P256.Signing.PrivateKey, notBefore: Date, notAfter: Date
    ) throws -> Certificate {
        let subject = try DistinguishedName {
            OrganizationName("vsphere")
            OrganizationalUnitName(role.rawValue)
            CommonName(commonName)
        }
        var alt: [GeneralName] = []
        for n in Set(names + [commonName]).sorted() {
            if let ip = TLSIdentity.ipBytes(n) {
                alt.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(ip))))
            } else {
                alt.append(.dnsName(n))
            }
        }
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true, keyEncipherment: true))
            try ExtendedKeyUsage(role.usages)
            SubjectAlternativeNames(alt)
            AuthorityKeyIdentifier(keyIdentifier: try issuer.extensions.subjectKeyIdentifier?.keyIdentifier)
        }
        return try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: publicKey,
            notValidBefore: notBefore, notValidAfter: notAfter,
            issuer: issuer.subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions,
            issuerPrivateKey: .init(issuerKey))
    }
}

/// Decides which TLS clients a server serves: the client's chain must verify to the cluster CA now
/// (RFC 5280: signatures, validity, CA constraints), the leaf must allow client authentication, must
/// state one of the allowed roles and must not be revoked. The agent installs it as BoringSSL's custom
/// verification callback, so a refused client fails in the handshake and never reaches a handler.
public struct ClientAuthorizer: Sendable {
    public let roots: [Certificate]
    public let allowed: Set<IdentityRole>
    /// Serial numbers (lowercase hex, colon-free) that are refused although they verify.
    public let revoked: Set<String>

    public struct Refusal: Error, CustomStringConvertible, Equatable {
        public var description: String
    }

    public init(roots: [Certificate], allowed: Set<IdentityRole>, revoked: Set<String> = []) {
        self.roots = roots
        self.allowed = allowed
        self.revoked = revoked
    }

    /// Reads the trusted CA certificates from a PEM file and, when given and present, revoked serial
    /// numbers from a text file (one per line, hex, `#` comments).
    public init(caFile: String, allowed: Set<IdentityRole>, revokedFile: String? = nil) throws {
        guard let text = TextFile.read(caFile) else {
            throw Refusal(description: "cannot read \(caFile) (missing, unreadable, or not a regular UTF-8 file of at most 16 MiB)")
        }
        let roots = try PEMDocument.parseMultiple(pemString: text).map { try Certificate(derEncoded: $0.derBytes) }
        guard !roots.isEmpty else { throw Refusal(description: "\(caFile) holds no certificate") }
        var revoked: Set<String> = []
        if let revokedFile, let list = TextFile.read(revokedFile) {
            revoked = Self.parseRevoked(list)
        }
        self.init(roots: roots, allowed: allowed, revoked: revoked)
    }

    /// The serial numbers of a revocation list's text: one per line, `#` comments; what is not a
    /// serial number is left out.
    public static func parseRevoked(_ text: String) -> Set<String> {
        var out: Set<String> = []
        for line in text.split(separator: "\n") {
            let s = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            if let serial = serialNumber(s) { out.insert(serial) }
        }
        return out
    }

    /// `s` normalized when it is a certificate serial number (hexadecimal, at most 20 bytes).
    public static func serialNumber(_ s: String) -> String? {
        let n = normalize(s)
        return n.isEmpty || n.count > 40 ? nil : n
    }

    /// Serial numbers as written by openssl (`serial=0A1B…`) or with colons, to lowercase hex without
    /// leading zeros.
    public static func normalize(_ s: String) -> String {
        var t = s.trimmed.lowercased()
        if t.hasPrefix("serial=") { t.removeFirst(7) }
        t.removeAll { $0 == ":" }
        guard !t.isEmpty, t.allSatisfy(\.isHexDigit) else { return "" }
        while t.count > 1 && t.hasPrefix("0") { t.removeFirst() }
        return t
    }

    public static func serial(of certificate: Certificate) -> String {
        normalize(Hex.encode(certificate.serialNumber.bytes))
    }

    /// The verified leaf's role, or why the chain (leaf first, as the peer sent it) is refused.
    public func authorize(_ chain: [Certificate], now: Date = Date()) async -> Result<(role: IdentityRole, name: String), Refusal> {
        guard let leaf = chain.first else { return .failure(Refusal(description: "no client certificate")) }
        let name = leaf.subject.description
        var verifier = Verifier(rootCertificates: CertificateStore(roots)) { RFC5280Policy(validationTime: now) }
        guard case .validCertificate = await verifier.validate(leaf: leaf, intermediates: CertificateStore(chain.dropFirst())) else {
            return .failure(Refusal(description: "\(name): does not verify to the cluster CA"))
        }
        guard let usage = try? leaf.extensions.extendedKeyUsage, usage.contains(.clientAuth) else {
            return .failure(Refusal(description: "\(name): not a client certificate"))
        }
        guard let role = IdentityRole(of: leaf) else { return .failure(Refusal(description: "\(name): states no role")) }
        guard allowed.contains(role) else {
            return .failure(Refusal(description: "\(name): a \(role.rawValue) identity may not call this server"))
        }
        guard !revoked.contains(Self.serial(of: leaf)) else { return .failure(Refusal(description: "\(name): revoked")) }
        return .success((role, name))
    }

    /// The same, for the certificates BoringSSL hands a custom verification callback.
    public func authorize(_ chain: [NIOSSLCertificate], now: Date = Date()) async -> Result<(role: IdentityRole, name: String), Refusal> {
        do {
            let parsed = try chain.map { try Certificate(derEncoded: try $0.toDERBytes()) }
            return await authorize(parsed, now: now)
        } catch {
            return .failure(Refusal(description: "unreadable client certificate (\(error))"))
        }
    }
}

/// Lowercase hexadecimal, the one spelling of digests, tokens and serial numbers here.
public enum Hex {
    static let digits = Array("0123456789abcdef".utf8)

    public static func encode<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.underestimatedCount * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xf)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The bytes of a string of hex digit pairs, or nil.
    public static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        for i in stride(from: 0, to: chars.count, by: 2) {
            guard let hi = hexValue(chars[i]), let lo = hexValue(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
        }
        return out
    }

    static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
