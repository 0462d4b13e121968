import ClusterModel

/// Wire types of the controller's HTTPS API (Schemas/controller-api.json).
public struct ApplyRequest: Codable, Sendable {
    public var manifest: ClusterManifest
    public var prune: Bool
    public var dryRun: Bool
    public init(manifest: ClusterManifest, prune: Bool = false, dryRun: Bool = false) {
        self.manifest = manifest
        self.prune = prune
        self.dryRun = dryRun
    }
}

/// One thing apply does (or would do): `create`, `update`, `delete`, `place`, `start`, `stop`.
public struct Change: Codable, Sendable, Equatable {
    public var action: String
    public var kind: String
    public var name: String
    public var reason: String
    public init(action: String, kind: String, name: String, reason: String) {
        self.action = action
        self.kind = kind
        self.name = name
        self.reason = reason
    }
}

public struct ApplyResponse: Codable, Sendable, Equatable {
    public var changes: [Change]
    public init(changes: [Change]) { self.changes = changes }
}

public struct VMView: Codable, Sendable, Equatable {
    public var name: String
    public var host: String?
    /// pending, running, shutoff, paused, migrating, error.
    public var state: String
    public var desiredPower: String
    public var cpus: Int
    public var memoryMiB: Int
    public var resourcePool: String?
    public var message: String?
    /// Each NIC's network and MAC address (allocated cluster-wide where the manifest gives none).
    public var nics: [NICView]?

    public struct NICView: Codable, Sendable, Equatable {
        public var network: String?
        public var portGroup: String?
        public var mac: String?
        public init(network: String?, portGroup: String?, mac: String?) {
            self.network = network
            self.portGroup = portGroup
            self.mac = mac
        }
    }

    public init(name: String, host: String?, state: String, desiredPower: String, cpus: Int, memoryMiB: Int, resourcePool: String?, message: String?,
                nics: [NICView]? = nil) {
        self.nics = nics
        self.name = name
        self.host = host
        self.state = state
        self.desiredPower = desiredPower
        self.cpus = cpus
        self.memoryMiB = memoryMiB
        self.resourcePool = resourcePool
        self.message = message
    }
}

public struct HostView: Codable, Sendable, Equatable {
    public var name: String
    public var site: String?
    public var agent: String?
    /// connected, maintenance, poweredOff, disconnected.
    public var state: String
    public var cpus: Int?
    public var memoryMiB: Int?
    public var vms: Int
    public var message: String?
    /// `on`, `standby` (powered off by DPM), `poweringOn`, `off`.
    public var power: String?
    /// Guest CPUs the host's agent parked (no vCPU runs there while the host is lightly loaded).
    public var parkedCPUs: [Int]?
    public init(name: String, site: String?, agent: String?, state: String, cpus: Int?, memoryMiB: Int?, vms: Int, message: String?, power: String? = nil, parkedCPUs: [Int]? = nil) {
        self.power = power
        self.parkedCPUs = parkedCPUs
        self.name = name
        self.site = site
        self.agent = agent
        self.state = state
        self.cpus = cpus
        self.memoryMiB = memoryMiB
        self.vms = vms
        self.message = message
    }
}

/// One action of the reconciler.
public struct TaskView: Codable, Sendable, Equatable {
    public var id: Int64
    public var action: String
    public var kind: String
    public var name: String
    public var host: String?
    /// running, done, failed.
    public var state: String
    public var reason: String
    public var error: String?
    public var createdMs: Int64
    public init(id: Int64, action: String, kind: String, name: String, host: String?, state: String, reason: String, error: String?, createdMs: Int64) {
        self.id = id
        self.action = action
        self.kind = kind
        self.name = name
        self.host = host
        self.state = state
        self.reason = reason
        self.error = error
        self.createdMs = createdMs
    }
}

/// One entry of the controller's event log: its own actions and the hosts' libvirt events.
public struct EventView: Codable, Sendable, Equatable {
    public var id: Int64
    public var timeMs: Int64
    /// `controller` or the host the event came from.
    public var source: String
    public var kind: String
    public var name: String?
    public var event: String?
    public var detail: String?
    public var message: String?
    /// When the host saw it (its agent's clock); `timeMs` is when the controller recorded it.
    public var hostTimeMs: Int64?
    public init(id: Int64, timeMs: Int64, source: String, kind: String, name: String?, event: String?, detail: String?, message: String?, hostTimeMs: Int64? = nil) {
        self.hostTimeMs = hostTimeMs
        self.id = id
        self.timeMs = timeMs
        self.source = source
        self.kind = kind
        self.name = name
        self.event = event
        self.detail = detail
        self.message = message
    }
}

public struct APIError: Codable, Sendable, Error, CustomStringConvertible {
    public var error: String
    public var problems: [ValidationProblem]?
    public init(error: String, problems: [ValidationProblem]? = nil) {
        self.error = error
        self.problems = problems
    }
    public var description: String { error }
}
