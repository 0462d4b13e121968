/// GET /v1/drs/plan (`vsphere-ctl drs plan`): what DRS and DPM would do now, and why.
public struct DRSPlanView: Codable, Sendable, Equatable {
    public struct MoveView: Codable, Sendable, Equatable {
        public var vm: String
        public var from: String
        public var to: String
        /// Moves of one batch run together; batches run in order.
        public var batch: Int
        public var reason: String
        /// The migration's predicted time and downtime (vMotion pricing).
        public var predictedMs: Int64?
        public var predictedDowntimeMs: Int64?
        public init(vm: String, from: String, to: String, batch: Int, reason: String, predictedMs: Int64? = nil, predictedDowntimeMs: Int64? = nil) {
            self.vm = vm
            self.from = from
            self.to = to
            self.batch = batch
            self.reason = reason
            self.predictedMs = predictedMs
            self.predictedDowntimeMs = predictedDowntimeMs
        }
    }

    public struct KeptView: Codable, Sendable, Equatable {
        public var vm: String?
        public var host: String?
        public var reason: String
        public init(vm: String? = nil, host: String? = nil, reason: String) {
            self.vm = vm
            self.host = host
            self.reason = reason
        }
    }

    public struct LoadView: Codable, Sendable, Equatable {
        public var host: String
        /// Measured demand over capacity, 0...1 (percent / 100).
        public var cpu: Double
        public var memory: Double
        /// After the plan's moves.
        public var cpuAfter: Double?
        public var memoryAfter: Double?
        public init(host: String, cpu: Double, memory: Double, cpuAfter: Double? = nil, memoryAfter: Double? = nil) {
            self.host = host
            self.cpu = cpu
            self.memory = memory
            self.cpuAfter = cpuAfter
            self.memoryAfter = memoryAfter
        }
    }

    public struct PowerView: Codable, Sendable, Equatable {
        /// `off`, `manual`, `automated`.
        public var automation: String
        /// `none`, `powerOn`, `consolidate`.
        public var advice: String
        public var reason: String
        public var hostsToPowerOn: [String]
        public var hostsToPowerOff: [String]
        public init(automation: String, advice: String, reason: String, hostsToPowerOn: [String], hostsToPowerOff: [String]) {
            self.automation = automation
            self.advice = advice
            self.reason = reason
            self.hostsToPowerOn = hostsToPowerOn
            self.hostsToPowerOff = hostsToPowerOff
        }
    }

    /// `balance` (DRS moves) or `consolidate` (DPM packing before powering hosts off).
    public var kind: String
    public var automation: String
    public var migrationThreshold: Int
    public var imbalanceBefore: Double
    public var imbalanceAfter: Double
    public var tolerance: Double?
    public var moves: [MoveView]
    public var kept: [KeptView]
    public var loads: [LoadView]
    public var power: PowerView
    public var elapsedMs: Double

    public init(
        kind: String, automation: String, migrationThreshold: Int, imbalanceBefore: Double, imbalanceAfter: Double, tolerance: Double?,
        moves: [MoveView], kept: [KeptView], loads: [LoadView], power: PowerView, elapsedMs: Double
    ) {
        self.kind = kind
        self.automation = automation
        self.migrationThreshold = migrationThreshold
        self.imbalanceBefore = imbalanceBefore
        self.imbalanceAfter = imbalanceAfter
        self.tolerance = tolerance
        self.moves = moves
        self.kept = kept
        self.loads = loads
        self.power = power
        self.elapsedMs = elapsedMs
    }
}

/// A DRS apply or a host evacuation (maintenance mode) carried out by the controller.
public struct JobView: Codable, Sendable, Equatable {
    public struct Item: Codable, Sendable, Equatable {
        /// `move` (a VM), `power-on`, `power-off` (a host).
        public var action: String
        public var vm: String?
        public var host: String?
        public var from: String?
        public var to: String?
        public var batch: Int?
        /// `pending`, `running`, `done`, `failed`, `skipped`.
        public var state: String
        public var migration: String?
        public var reason: String?
        public var error: String?
        public init(action: String, vm: String? = nil, host: String? = nil, from: String? = nil, to: String? = nil, batch: Int? = nil, state: String = "pending", reason: String? = nil) {
            self.action = action
            self.vm = vm
            self.host = host
            self.from = from
            self.to = to
            self.batch = batch
            self.state = state
            self.reason = reason
        }
    }

    public var id: Int
    /// `drs-apply` or `maintenance`.
    public var kind: String
    public var host: String?
    /// `running`, `done` (every item done), `partial` (some failed or were skipped), `failed`.
    public var state: String
    public var startedMs: Int64
    public var finishedMs: Int64?
    public var items: [Item]
    public var notes: [String]

    public init(id: Int, kind: String, host: String? = nil, state: String, startedMs: Int64, items: [Item] = [], notes: [String] = []) {
        self.id = id
        self.kind = kind
        self.host = host
        self.state = state
        self.startedMs = startedMs
        self.items = items
        self.notes = notes
    }

    public var isFinished: Bool { state != "running" }
}

/// POST /v1/hosts/{name}/maintenance.
public struct MaintenanceRequest: Codable, Sendable, Equatable {
    public var enabled: Bool
    public init(enabled: Bool) { self.enabled = enabled }
}

/// GET /v1/dpm (`vsphere-ctl dpm status`).
public struct DPMStatusView: Codable, Sendable, Equatable {
    public struct HostPower: Codable, Sendable, Equatable {
        public var host: String
        public var state: String
        /// `on`, `standby`, `poweringOn`, `off`.
        public var power: String
        public var driver: String?
        public var since: String?
        public var by: String?
        public var reason: String?
        public var error: String?
        public var cpu: Double?
        public var memory: Double?
        public init(host: String, state: String, power: String, driver: String?, since: String?, by: String?, reason: String?, error: String?, cpu: Double?, memory: Double?) {
            self.host = host
            self.state = state
            self.power = power
            self.driver = driver
            self.since = since
            self.by = by
            self.reason = reason
            self.error = error
            self.cpu = cpu
            self.memory = memory
        }
    }

    public var automation: String
    public var targetUtilization: Int
    public var tolerance: Int
    public var powerOnSustainSeconds: Int
    public var powerOffSustainSeconds: Int
    public var spareHosts: Int
    /// Seconds of load history the controller holds.
    public var historySeconds: Double
    public var advice: String
    public var reason: String
    public var hosts: [HostPower]

    public init(
        automation: String, targetUtilization: Int, tolerance: Int, powerOnSustainSeconds: Int, powerOffSustainSeconds: Int, spareHosts: Int,
        historySeconds: Double, advice: String, reason: String, hosts: [HostPower]
    ) {
        self.automation = automation
        self.targetUtilization = targetUtilization
        self.tolerance = tolerance
        self.powerOnSustainSeconds = powerOnSustainSeconds
        self.powerOffSustainSeconds = powerOffSustainSeconds
        self.spareHosts = spareHosts
        self.historySeconds = historySeconds
        self.advice = advice
        self.reason = reason
        self.hosts = hosts
    }
}

public struct MaintenanceResponse: Codable, Sendable, Equatable {
    public var host: HostView
    /// The evacuation (entering maintenance); nil when leaving it.
    public var job: JobView?
    public init(host: HostView, job: JobView?) {
        self.host = host
        self.job = job
    }
}
