import AgentAPI
import ClusterModel

/// `GET /v1/resource-pools`: each pool as declared, with what it reserves and how every host enforces
/// its share (the controller's division and the agent's cgroup partition read back).
public struct ResourcePoolView: Codable, Sendable, Equatable {
    public var name: String
    public var parent: String?
    public var cpu: ServiceLevels.CPULevels?
    public var memory: ServiceLevels.MemoryLevels?
    /// The pool's effective reservation (its own, or what its children reserve when expandable).
    public var effectiveReservation: ResourceAmounts
    /// Running VMs of the pool's subtree, cluster-wide.
    public var vms: Int
    public var hosts: [HostShare]

    public init(
        name: String, parent: String?, cpu: ServiceLevels.CPULevels?, memory: ServiceLevels.MemoryLevels?,
        effectiveReservation: ResourceAmounts, vms: Int, hosts: [HostShare]
    ) {
        self.name = name
        self.parent = parent
        self.cpu = cpu
        self.memory = memory
        self.effectiveReservation = effectiveReservation
        self.vms = vms
        self.hosts = hosts
    }

    public struct ResourceAmounts: Codable, Sendable, Equatable {
        public var cpuMHz: Int
        public var memoryMiB: Int
        public init(cpuMHz: Int, memoryMiB: Int) {
            self.cpuMHz = cpuMHz
            self.memoryMiB = memoryMiB
        }
    }

    public struct HostShare: Codable, Sendable, Equatable {
        public var host: String
        /// What the controller asked this host to enforce.
        public var setting: HostPoolSetting
        /// The partition as the host's kernel has it (nil until the agent answered).
        public var applied: PoolPartition?
        /// Why the host could not apply it, when it could not.
        public var error: String?
        public var atMs: Int64
        public init(host: String, setting: HostPoolSetting, applied: PoolPartition?, error: String?, atMs: Int64) {
            self.host = host
            self.setting = setting
            self.applied = applied
            self.error = error
            self.atMs = atMs
        }
    }
}
