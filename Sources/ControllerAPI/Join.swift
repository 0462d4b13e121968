/// `POST /v1/hosts/{name}/join-token`: a one-time token a host joins the cluster with.
public struct JoinTokenRequest: Codable, Sendable {
    public var ttlSeconds: Int?
    public init(ttlSeconds: Int? = nil) { self.ttlSeconds = ttlSeconds }
}

public struct JoinToken: Codable, Sendable, Equatable {
    public var host: String
    public var token: String
    public var expiresMs: Int64
    /// SHA-256 of the cluster CA certificate (DER, hex): the joining host pins it.
    public var caFingerprint: String
    public init(host: String, token: String, expiresMs: Int64, caFingerprint: String) {
        self.host = host
        self.token = token
        self.expiresMs = expiresMs
        self.caFingerprint = caFingerprint
    }
}

/// `GET /v1/ca`: the cluster CA certificate.
public struct ClusterCAView: Codable, Sendable, Equatable {
    public var certificate: String
    public var fingerprint: String
    public init(certificate: String, fingerprint: String) {
        self.certificate = certificate
        self.fingerprint = fingerprint
    }
}

/// `POST /v1/join`: the host's name, its token and a CSR for the key it keeps.
public struct JoinRequest: Codable, Sendable {
    public var host: String
    public var token: String
    public var csr: String
    public init(host: String, token: String, csr: String) {
        self.host = host
        self.token = token
        self.csr = csr
    }
}

public struct JoinResponse: Codable, Sendable, Equatable {
    /// The host's certificate chain (its certificate, then the cluster CA), PEM.
    public var certificate: String
    public var ca: String
    public init(certificate: String, ca: String) {
        self.certificate = certificate
        self.ca = ca
    }
}
