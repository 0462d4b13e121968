import AgentAPI
import ClusterModel
import Libvirt

/// What an agent request can fail with, and the HTTP status each maps to.
public enum AgentError: Error, Sendable, CustomStringConvertible {
    case invalid([ValidationProblem])
    case notFound(String)
    case conflict(String)
    case unavailable(String)
    case libvirt(LibvirtError)
    case internalError(String)

    public var status: Int {
        switch self {
        case .invalid: return 400
        case .notFound: return 404
        case .conflict: return 409
        case .unavailable: return 503
        case .internalError: return 500
        case .libvirt(let e):
            switch e.code {
            case .notFound: return 404
            case .alreadyExists, .operationInvalid: return 409
            case .invalid: return 400
            case .unsupported: return 501
            case .timeout: return 504
            case .connectionLost: return 503
            case .operationFailed: return 500
            }
        }
    }

    public var body: ErrorBody {
        switch self {
        case .invalid(let problems):
            return ErrorBody(code: "invalid", message: problems.map(\.description).joined(separator: "; "), problems: problems)
        case .notFound(let m): return ErrorBody(code: "notFound", message: m)
        case .conflict(let m): return ErrorBody(code: "conflict", message: m)
        case .unavailable(let m): return ErrorBody(code: "unavailable", message: m)
        case .internalError(let m): return ErrorBody(code: "internal", message: m)
        case .libvirt(let e): return ErrorBody(code: e.code.rawValue, message: e.message)
        }
    }

    public var description: String { "\(status) \(body.error.code): \(body.error.message)" }
}
