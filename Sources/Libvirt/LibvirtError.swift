import CLibvirt

/// The one error type of the libvirt wrapper. libvirt keeps its last error per thread, so it is copied
/// inside the same synchronous call that failed, before any suspension point.
public struct LibvirtError: Error, Sendable, CustomStringConvertible, Equatable {
    public enum Code: String, Sendable, Codable {
        case notFound
        case alreadyExists
        case invalid
        /// The request is valid but not in this state (e.g. starting a running domain).
        case operationInvalid
        case operationFailed
        case timeout
        case connectionLost
        case unsupported
    }

    public var code: Code
    public var message: String
    /// libvirt's own error number and the domain (subsystem) that raised it.
    public var virCode: Int32
    public var virDomain: Int32

    public init(_ code: Code, _ message: String, virCode: Int32 = 0, virDomain: Int32 = 0) {
        self.code = code
        self.message = message
        self.virCode = virCode
        self.virDomain = virDomain
    }

    public var description: String { "\(code.rawValue): \(message)" }
    public var isNotFound: Bool { code == .notFound }
    public var isConnectionLost: Bool { code == .connectionLost }

    /// Copies and clears the calling thread's last libvirt error.
    /// `fallback` is evaluated only after the error is read: any libvirt call (even virDomainGetName)
    /// resets the thread's last error.
    static func last(_ fallback: @autoclosure () -> String) -> LibvirtError {
        guard let err = virGetLastError() else { return LibvirtError(.operationFailed, fallback()) }
        let code = err.pointee.code
        let domain = err.pointee.domain
        let message = err.pointee.message.map { String(cString: $0) } ?? fallback()
        virResetLastError()
        return LibvirtError(classify(code: code, domain: domain, message: message), message, virCode: code, virDomain: domain)
    }

    static func classify(code: Int32, domain: Int32, message: String) -> Code {
        func is_(_ n: virErrorNumber) -> Bool { code == Int32(n.rawValue) }
        if is_(VIR_ERR_NO_DOMAIN) || is_(VIR_ERR_NO_NETWORK) || is_(VIR_ERR_NO_STORAGE_POOL)
            || is_(VIR_ERR_NO_STORAGE_VOL) || is_(VIR_ERR_NO_NWFILTER) || is_(VIR_ERR_NO_SECRET)
            || is_(VIR_ERR_NO_DOMAIN_SNAPSHOT) || is_(VIR_ERR_NO_INTERFACE) || is_(VIR_ERR_NO_NODE_DEVICE)
        {
            return .notFound
        }
        if is_(VIR_ERR_DOM_EXIST) { return .alreadyExists }
        if is_(VIR_ERR_OPERATION_INVALID) { return .operationInvalid }
        if is_(VIR_ERR_OPERATION_TIMEOUT) || is_(VIR_ERR_AGENT_UNRESPONSIVE) { return .timeout }
        if is_(VIR_ERR_NO_SUPPORT) || is_(VIR_ERR_OPERATION_UNSUPPORTED) || is_(VIR_ERR_CONFIG_UNSUPPORTED) {
            return .unsupported
        }
        if is_(VIR_ERR_INVALID_ARG) || is_(VIR_ERR_XML_ERROR) || is_(VIR_ERR_XML_DETAIL)
            || is_(VIR_ERR_INVALID_DOMAIN) && !message.contains("closed")
        {
            return .invalid
        }
        if is_(VIR_ERR_NO_CONNECT) || is_(VIR_ERR_INVALID_CONN) || is_(VIR_ERR_RPC)
            || domain == Int32(VIR_FROM_RPC.rawValue) && (is_(VIR_ERR_SYSTEM_ERROR) || is_(VIR_ERR_INTERNAL_ERROR))
            || message.contains("client socket is closed") || message.contains("End of file while reading")
            || message.contains("Cannot recv data") || message.contains("Cannot write data")
        {
            return .connectionLost
        }
        return .operationFailed
    }
}

/// libvirt prints every error to stderr by default; errors are read per call instead.
func installQuietErrorHandler() {
    virSetErrorFunc(nil, { _, _ in })
}
