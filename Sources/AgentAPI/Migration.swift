import MigrationPolicy

/// POST /v1/migrations on the source host's agent: migrate a running VM peer to peer.
public struct MigrationStart: Codable, Sendable, Equatable {
    /// The controller's id of the migration (one agent keeps each id once).
    public var id: String
    public var vm: String
    /// The destination's libvirt URI (`qemu+tls://HOST/system`; `qemu+tcp://` on the testbed).
    public var destinationURI: String
    /// Disk targets (`vda`, ...) copied along; empty with shared storage.
    public var copyDisks: [String]
    /// Copy only the top image of each disk (its backing chain exists on the destination).
    public var incremental: Bool
    public var bandwidthMiBps: Int?
    public var policy: ConvergencePolicy
    /// Let libvirt migrate disks it cannot prove shared (a shared pool on a local file system, as on
    /// the testbed): libvirt's VIR_MIGRATE_UNSAFE.
    public var unsafe: Bool?

    public init(
        id: String, vm: String, destinationURI: String, copyDisks: [String] = [], incremental: Bool = false,
        bandwidthMiBps: Int? = nil, policy: ConvergencePolicy, unsafe: Bool? = nil
    ) {
        self.unsafe = unsafe
        self.id = id
        self.vm = vm
        self.destinationURI = destinationURI
        self.copyDisks = copyDisks
        self.incremental = incremental
        self.bandwidthMiBps = bandwidthMiBps
        self.policy = policy
    }
}

/// A migration as the source agent sees it (GET /v1/migrations/{id}).
public struct MigrationProgress: Codable, Sendable, Equatable {
    public var id: String
    public var vm: String
    public var destinationURI: String
    /// `running`, `post-copy`, `completed`, `failed`, `cancelled`, `aborted` (by the policy).
    public var phase: String
    public var startedMs: Int64
    public var elapsedMs: Int64
    /// The latest reading of libvirt's job statistics.
    public var sample: JobSample?
    public var memoryTotal: Int64
    public var memoryProcessed: Int64
    public var memoryRemaining: Int64
    public var diskTotal: Int64
    public var diskProcessed: Int64
    public var diskRemaining: Int64
    public var downtimeMs: Int
    public var steps: [PolicyStep]
    public var error: String?
    /// The VM's state on this host once the migration ended (`running` after a failed one; absent once
    /// it left).
    public var sourceState: String?

    public init(id: String, vm: String, destinationURI: String, startedMs: Int64) {
        self.id = id
        self.vm = vm
        self.destinationURI = destinationURI
        self.phase = "running"
        self.startedMs = startedMs
        self.elapsedMs = 0
        self.memoryTotal = 0
        self.memoryProcessed = 0
        self.memoryRemaining = 0
        self.diskTotal = 0
        self.diskProcessed = 0
        self.diskRemaining = 0
        self.downtimeMs = 0
        self.steps = []
    }

    public var isFinished: Bool { ["completed", "failed", "cancelled", "aborted"].contains(phase) }
}

/// A VM's disk image as its host sees it (GET /v1/vms/{name}/disks).
public struct DiskImage: Codable, Sendable, Equatable {
    /// Device target in the guest (`vda`).
    public var target: String
    public var path: String
    public var format: String
    public var virtualSize: Int64
    /// Bytes the image takes on its storage.
    public var actualSize: Int64
    public var backingFile: String?
    public var backingFormat: String?
    public var readonly: Bool

    public init(
        target: String, path: String, format: String, virtualSize: Int64, actualSize: Int64, backingFile: String? = nil,
        backingFormat: String? = nil, readonly: Bool = false
    ) {
        self.target = target
        self.path = path
        self.format = format
        self.virtualSize = virtualSize
        self.actualSize = actualSize
        self.backingFile = backingFile
        self.backingFormat = backingFormat
        self.readonly = readonly
    }
}

/// POST /v1/disks/prepare on the destination: create empty images to receive copied disks.
public struct DiskPrepare: Codable, Sendable, Equatable {
    public var disks: [DiskImage]
    /// Images in shared pools that must already be visible here (the pool is mounted); checked first.
    public var mustExist: [String]?
    public init(disks: [DiskImage], mustExist: [String]? = nil) {
        self.disks = disks
        self.mustExist = mustExist
    }
}

/// What the destination's prepare created (and may remove again if the migration fails).
public struct DiskPrepareResult: Codable, Sendable, Equatable {
    public var created: [String]
    /// Images whose backing file is present on this host (an incremental copy is possible).
    public var backingPresent: Bool
    public init(created: [String], backingPresent: Bool) {
        self.created = created
        self.backingPresent = backingPresent
    }
}

/// GET /v1/vms/{name}/migration-facts: what pricing needs from the source.
public struct MigrationFacts: Codable, Sendable, Equatable {
    public var vm: String
    public var memoryBytes: Int64
    /// Guest memory that holds data (the QEMU process's resident memory, capped at the guest's size).
    public var residentBytes: Int64
    /// Measured over about a second with QEMU's page sampling; nil when the measurement failed.
    public var dirtyRate: Int64?
    public var disks: [DiskImage]

    public init(vm: String, memoryBytes: Int64, residentBytes: Int64, dirtyRate: Int64?, disks: [DiskImage]) {
        self.vm = vm
        self.memoryBytes = memoryBytes
        self.residentBytes = residentBytes
        self.dirtyRate = dirtyRate
        self.disks = disks
    }
}

/// Statistics of the last finished incoming migration (on the destination).
public struct CompletedJob: Codable, Sendable, Equatable {
    public var vm: String
    public var timeElapsedMs: Int64
    public var downtimeMs: Int64
    public var dataTotal: Int64
    public var dataProcessed: Int64
    public var memoryBps: Int64
    public var iterations: Int
    public var raw: [String: Scalar]

    public init(vm: String, timeElapsedMs: Int64, downtimeMs: Int64, dataTotal: Int64, dataProcessed: Int64, memoryBps: Int64, iterations: Int, raw: [String: Scalar]) {
        self.vm = vm
        self.timeElapsedMs = timeElapsedMs
        self.downtimeMs = downtimeMs
        self.dataTotal = dataTotal
        self.dataProcessed = dataProcessed
        self.memoryBps = memoryBps
        self.iterations = iterations
        self.raw = raw
    }
}
