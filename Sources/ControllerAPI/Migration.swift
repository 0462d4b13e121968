import MigrationPolicy

/// POST /v1/vms/{name}/migrate.
public struct MigrateRequest: Codable, Sendable, Equatable {
    /// Destination host.
    public var to: String
    /// A named convergence policy (ConvergencePolicy.names); the cluster's default when absent.
    public var policy: String?
    /// Cap for this migration, MiB/s.
    public var bandwidthMiBps: Int?
    /// Overrides the policy's budget (seconds).
    public var budgetSeconds: Int?

    public init(to: String, policy: String? = nil, bandwidthMiBps: Int? = nil, budgetSeconds: Int? = nil) {
        self.to = to
        self.policy = policy
        self.bandwidthMiBps = bandwidthMiBps
        self.budgetSeconds = budgetSeconds
    }
}

/// A migration as the controller records it (GET /v1/migrations, `vsphere-ctl get migrations`).
/// `vm`, `from`, `to`, `result`, `totalMs`, `downtimeMs`, `bytes` and `steps` are what
/// `vm migrate -o json` prints (shared/CONTRACT.md).
public struct MigrationView: Codable, Sendable, Equatable {
    public var id: Int64
    /// `m-ID`.
    public var name: String
    public var vm: String
    public var from: String
    public var to: String
    /// `queued`, `starting`, `running`, `completed`, `failed`, `cancelled`, `aborted`.
    public var state: String
    /// The final state once finished, nil before.
    public var result: String?
    public var policy: ConvergencePolicy
    public var bandwidthMiBps: Int?
    /// The cap it ran with: the request's, or the host's share of `hostBandwidthMiBps`.
    public var effectiveBandwidthMiBps: Int?
    /// `shared`, or `copy` / `copy-incremental` with the copied disk targets in `copyDisks`.
    public var storage: String
    public var copyDisks: [String]
    public var createdMs: Int64
    public var startedMs: Int64?
    public var finishedMs: Int64?
    /// Priced before it started.
    public var predicted: Price?
    /// libvirt's job time (ms), QEMU's measured downtime (ms) and the bytes sent, once completed.
    public var totalMs: Int64?
    public var downtimeMs: Int64?
    public var bytes: Int64?
    public var steps: [PolicyStep]
    public var progress: MigrationProgressView?
    public var error: String?
    public var cancelRequested: Bool
    /// Disks the destination created for the copy (removed again if the migration fails).
    public var preparedDisks: [String]

    public init(id: Int64, vm: String, from: String, to: String, state: String, policy: ConvergencePolicy, bandwidthMiBps: Int?, createdMs: Int64) {
        self.id = id
        self.name = "m-\(id)"
        self.vm = vm
        self.from = from
        self.to = to
        self.state = state
        self.policy = policy
        self.bandwidthMiBps = bandwidthMiBps
        self.storage = "shared"
        self.copyDisks = []
        self.createdMs = createdMs
        self.steps = []
        self.cancelRequested = false
        self.preparedDisks = []
    }

    public var isFinished: Bool { ["completed", "failed", "cancelled", "aborted"].contains(state) }
}

/// Where a running migration is, for progress bars.
public struct MigrationProgressView: Codable, Sendable, Equatable {
    public var transferredMiB: Double
    public var remainingMiB: Double
    public var totalMiB: Double
    public var dirtyRateMiBps: Double
    public var bandwidthMiBps: Double
    public var iteration: Int
    public var elapsedMs: Int64
    /// Remaining data over the current bandwidth; nil while unknown.
    public var etaSeconds: Double?
    /// The policy's latest step (`set-downtime: 300 ms: ...`).
    public var step: String?
    public var phase: String

    public init(
        transferredMiB: Double, remainingMiB: Double, totalMiB: Double, dirtyRateMiBps: Double, bandwidthMiBps: Double,
        iteration: Int, elapsedMs: Int64, etaSeconds: Double?, step: String?, phase: String
    ) {
        self.transferredMiB = transferredMiB
        self.remainingMiB = remainingMiB
        self.totalMiB = totalMiB
        self.dirtyRateMiBps = dirtyRateMiBps
        self.bandwidthMiBps = bandwidthMiBps
        self.iteration = iteration
        self.elapsedMs = elapsedMs
        self.etaSeconds = etaSeconds
        self.step = step
        self.phase = phase
    }
}
