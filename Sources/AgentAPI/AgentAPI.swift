import ClusterModel

/// Wire types of the agent's HTTP API; Schemas/agent-api.json documents them.
public enum AgentAPIInfo {
    public static let version = "v1"
}

/// A JSON scalar (libvirt statistics and tuning parameters).
public enum Scalar: Codable, Sendable, Equatable {
    case int(Int64)
    case double(Double)
    case bool(Bool)
    case string(String)

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let v = try? c.decode(Bool.self) { self = .bool(v) }
        else if let v = try? c.decode(Int64.self) { self = .int(v) }
        else if let v = try? c.decode(Double.self) { self = .double(v) }
        else { self = .string(try c.decode(String.self)) }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .int(let v): try c.encode(v)
        case .double(let v): try c.encode(v)
        case .bool(let v): try c.encode(v)
        case .string(let v): try c.encode(v)
        }
    }

    public var int: Int64? {
        switch self {
        case .int(let v): return v
        case .double(let v): return Int64(v)
        default: return nil
        }
    }
}

public struct HostInventory: Codable, Sendable, Equatable {
    public var hostname: String
    public var agentVersion: String
    public var libvirtVersion: String
    public var qemuVersion: String
    /// `kvm` or `tcg`: what this agent runs guests with.
    public var accelerator: String
    public var cpu: CPU
    public var numa: [NUMANode]
    public var memory: Memory
    public var capacity: Capacity
    public var connected: Bool
    /// CPU models QEMU can give guests here (domain capabilities, usable ones).
    public var cpuModels: [String]?
    /// The host CPU's own model name.
    public var hostCPUModel: String?
    /// Bridges and libvirt networks guests can plug into.
    public var networks: [String]?
    /// The host CPUs guests may run on (the agent's `guestCPUs`); nil: all of them.
    public var guestCPUs: [Int]?
    /// Guest CPUs parked now: no vCPU or emulator thread is pinned there (core parking).
    public var parkedCPUs: [Int]?

    public struct CPU: Codable, Sendable, Equatable {
        public var model: String
        public var cpus: Int
        public var mhz: Int
        public var sockets: Int
        public var cores: Int
        public var threads: Int

        public init(model: String, cpus: Int, mhz: Int, sockets: Int, cores: Int, threads: Int) {
            self.model = model
            self.cpus = cpus
            self.mhz = mhz
            self.sockets = sockets
            self.cores = cores
            self.threads = threads
        }
    }

    public struct NUMANode: Codable, Sendable, Equatable {
        public var id: Int
        public var memoryMiB: Int
        public var cpus: [Int]

        public init(id: Int, memoryMiB: Int, cpus: [Int]) {
            self.id = id
            self.memoryMiB = memoryMiB
            self.cpus = cpus
        }
    }

    public struct Memory: Codable, Sendable, Equatable {
        public var totalMiB: Int
        public var freeMiB: Int

        public init(totalMiB: Int, freeMiB: Int) {
            self.totalMiB = totalMiB
            self.freeMiB = freeMiB
        }
    }

    /// What is left for new VMs: host totals net of what defined VMs reserve and use.
    public struct Capacity: Codable, Sendable, Equatable {
        public var vms: Int
        public var runningVMs: Int
        public var allocatedVCPUs: Int
        public var allocatedMemoryMiB: Int
        public var reservedMemoryMiB: Int
        public var reservedCPUMHz: Int
        public var freeMemoryMiB: Int
        public var unreservedMemoryMiB: Int
        public var unreservedCPUMHz: Int

        public init(vms: Int, runningVMs: Int, allocatedVCPUs: Int, allocatedMemoryMiB: Int, reservedMemoryMiB: Int, reservedCPUMHz: Int, freeMemoryMiB: Int, unreservedMemoryMiB: Int, unreservedCPUMHz: Int) {
            self.vms = vms
            self.runningVMs = runningVMs
            self.allocatedVCPUs = allocatedVCPUs
            self.allocatedMemoryMiB = allocatedMemoryMiB
            self.reservedMemoryMiB = reservedMemoryMiB
            self.reservedCPUMHz = reservedCPUMHz
            self.freeMemoryMiB = freeMemoryMiB
            self.unreservedMemoryMiB = unreservedMemoryMiB
            self.unreservedCPUMHz = unreservedCPUMHz
        }
    }

    public init(hostname: String, agentVersion: String, libvirtVersion: String, qemuVersion: String, accelerator: String, cpu: CPU, numa: [NUMANode], memory: Memory, capacity: Capacity, connected: Bool, cpuModels: [String]? = nil, hostCPUModel: String? = nil, networks: [String]? = nil, guestCPUs: [Int]? = nil, parkedCPUs: [Int]? = nil) {
        self.guestCPUs = guestCPUs
        self.parkedCPUs = parkedCPUs
        self.cpuModels = cpuModels
        self.hostCPUModel = hostCPUModel
        self.networks = networks
        self.hostname = hostname
        self.agentVersion = agentVersion
        self.libvirtVersion = libvirtVersion
        self.qemuVersion = qemuVersion
        self.accelerator = accelerator
        self.cpu = cpu
        self.numa = numa
        self.memory = memory
        self.capacity = capacity
        self.connected = connected
    }
}

public struct VMStatus: Codable, Sendable, Equatable {
    public var name: String
    public var uuid: String
    /// running, blocked, paused, shutdown, shutoff, crashed, pmsuspended.
    public var state: String
    public var persistent: Bool
    public var vcpus: Int
    public var memoryMiB: Int
    public var spec: VMSpec?
    /// What the persistent definition says (it applies at the next boot), as libvirt has it now: a
    /// change made outside the controller shows here.
    public var definedVCPUs: Int?
    public var definedMemoryMiB: Int?

    public init(name: String, uuid: String, state: String, persistent: Bool, vcpus: Int, memoryMiB: Int, spec: VMSpec? = nil,
                definedVCPUs: Int? = nil, definedMemoryMiB: Int? = nil) {
        self.definedVCPUs = definedVCPUs
        self.definedMemoryMiB = definedMemoryMiB
        self.name = name
        self.uuid = uuid
        self.state = state
        self.persistent = persistent
        self.vcpus = vcpus
        self.memoryMiB = memoryMiB
        self.spec = spec
    }
}

public struct VMStats: Codable, Sendable, Equatable {
    public var name: String
    public var state: String
    public var cpuTimeNs: Int64
    public var vcpus: Int
    public var memoryKiB: Int64
    /// Every statistic libvirt reports for the domain (virConnectGetAllDomainStats), by libvirt's key.
    public var raw: [String: Scalar]

    public init(name: String, state: String, cpuTimeNs: Int64, vcpus: Int, memoryKiB: Int64, raw: [String: Scalar]) {
        self.name = name
        self.state = state
        self.cpuTimeNs = cpuTimeNs
        self.vcpus = vcpus
        self.memoryKiB = memoryKiB
        self.raw = raw
    }
}

/// cputune and memtune as libvirt reports them live, and where the kernel keeps them.
public struct VMTuning: Codable, Sendable, Equatable {
    public var name: String
    public var scheduler: [String: Scalar]
    public var memory: [String: Scalar]
    /// cgroup v1 paths of the domain's QEMU process, relative to /sys/fs/cgroup/CONTROLLER.
    public var cgroups: [String: String]

    public init(name: String, scheduler: [String: Scalar], memory: [String: Scalar], cgroups: [String: String]) {
        self.name = name
        self.scheduler = scheduler
        self.memory = memory
        self.cgroups = cgroups
    }
}

/// An event of the agent's stream: a libvirt domain event or one of the agent's own
/// (`agent` kind: `libvirt-connected`, `libvirt-disconnected`).
public struct AgentEvent: Codable, Sendable, Equatable {
    public var seq: Int64
    /// Milliseconds since 1970.
    public var timeMs: Int64
    public var kind: String
    public var domain: String?
    public var uuid: String?
    public var event: String?
    public var detail: String?
    public var info: [String: String]

    public init(seq: Int64, timeMs: Int64, kind: String, domain: String? = nil, uuid: String? = nil, event: String? = nil, detail: String? = nil, info: [String: String] = [:]) {
        self.seq = seq
        self.timeMs = timeMs
        self.kind = kind
        self.domain = domain
        self.uuid = uuid
        self.event = event
        self.detail = detail
        self.info = info
    }
}

public struct ActionResult: Codable, Sendable, Equatable {
    public var name: String
    public var action: String
    public var state: String
    /// For shutdown: `acpi` when the guest powered off by itself, `forced` when the agent destroyed it.
    public var how: String?

    public init(name: String, action: String, state: String, how: String? = nil) {
        self.name = name
        self.action = action
        self.state = state
        self.how = how
    }
}

public struct ErrorBody: Codable, Sendable, Equatable {
    public struct Detail: Codable, Sendable, Equatable {
        /// invalid, notFound, conflict, unavailable, failed, ...
        public var code: String
        public var message: String
        public var problems: [ValidationProblem]?

        public init(code: String, message: String, problems: [ValidationProblem]? = nil) {
            self.code = code
            self.message = message
            self.problems = problems
        }
    }
    public var error: Detail

    public init(code: String, message: String, problems: [ValidationProblem]? = nil) {
        error = Detail(code: code, message: message, problems: problems)
    }
}
