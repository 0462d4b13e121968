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

/// `GET /v1/pools`: a storage pool of the manifest and what each host that should see it reports.
public struct StoragePoolView: Codable, Sendable, Equatable {
    public var name: String
    public var type: String
    public var path: String?
    public var volumeGroup: String?
    public var site: String?
    public var hosts: [OnHost]

    public struct OnHost: Codable, Sendable, Equatable {
        public var host: String
        public var active: Bool
        public var capacityBytes: UInt64
        public var allocationBytes: UInt64
        public var availableBytes: UInt64
        public var volumes: Int
        public var error: String?
        public init(host: String, active: Bool, capacityBytes: UInt64, allocationBytes: UInt64, availableBytes: UInt64, volumes: Int, error: String?) {
            self.host = host
            self.active = active
            self.capacityBytes = capacityBytes
            self.allocationBytes = allocationBytes
            self.availableBytes = availableBytes
            self.volumes = volumes
            self.error = error
        }
    }

    public init(name: String, type: String, path: String?, volumeGroup: String?, site: String?, hosts: [OnHost]) {
        self.name = name
        self.type = type
        self.path = path
        self.volumeGroup = volumeGroup
        self.site = site
        self.hosts = hosts
    }
}

/// `POST /v1/vms/{name}/move-storage`: storage vMotion of one disk (0-based) into another pool.
public struct MoveStorageRequest: Codable, Sendable, Equatable {
    public var disk: Int
    public var pool: String
    public var bandwidthMiBps: Int?
    public init(disk: Int, pool: String, bandwidthMiBps: Int? = nil) {
        self.disk = disk
        self.pool = pool
        self.bandwidthMiBps = bandwidthMiBps
    }
}

/// `GET /v1/networks`: each network of the distributed switch with what every host reports of it.
public struct NetworkView: Codable, Sendable, Equatable {
    public var name: String
    /// `bridge`, `vlan` or `vxlan`.
    public var mode: String
    public var bridge: String
    public var vlan: Int?
    public var vni: Int?
    public var mtu: Int?
    public var antiSpoofing: Bool
    public var portGroups: [String]
    public var hosts: [OnHost]

    public struct OnHost: Codable, Sendable, Equatable {
        public var host: String
        public var up: Bool
        public var mtu: Int?
        public var ports: [String]
        public var peers: [String]
        public var error: String?
        public init(host: String, up: Bool, mtu: Int?, ports: [String], peers: [String], error: String?) {
            self.host = host
            self.up = up
            self.mtu = mtu
            self.ports = ports
            self.peers = peers
            self.error = error
        }
    }

    public init(name: String, mode: String, bridge: String, vlan: Int?, vni: Int?, mtu: Int?, antiSpoofing: Bool, portGroups: [String], hosts: [OnHost]) {
        self.name = name
        self.mode = mode
        self.bridge = bridge
        self.vlan = vlan
        self.vni = vni
        self.mtu = mtu
        self.antiSpoofing = antiSpoofing
        self.portGroups = portGroups
        self.hosts = hosts
    }
}
