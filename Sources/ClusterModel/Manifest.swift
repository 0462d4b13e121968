import FoundationEssentials

/// The contract's cluster document (Schemas/cluster.schema.json). Every section is optional;
/// `apply` merges documents by name.
public struct ClusterManifest: Codable, Sendable, Equatable {
    public var apiVersion: String
    public var kind: String
    public var metadata: Metadata?
    public var settings: Settings?
    public var sites: [Site]?
    public var hosts: [Host]?
    public var storagePools: [StoragePool]?
    public var networks: [Network]?
    public var resourcePools: [ResourcePool]?
    public var vms: [VMSpec]?

    public init(
        apiVersion: String = "vsphere/v1", kind: String = "Cluster", metadata: Metadata? = nil, settings: Settings? = nil,
        sites: [Site]? = nil, hosts: [Host]? = nil, storagePools: [StoragePool]? = nil, networks: [Network]? = nil,
        resourcePools: [ResourcePool]? = nil, vms: [VMSpec]? = nil
    ) {
        self.apiVersion = apiVersion
        self.kind = kind
        self.metadata = metadata
        self.settings = settings
        self.sites = sites
        self.hosts = hosts
        self.storagePools = storagePools
        self.networks = networks
        self.resourcePools = resourcePools
        self.vms = vms
    }

    public struct Metadata: Codable, Sendable, Equatable {
        public var name: String
        public init(name: String) { self.name = name }
    }

    public struct Settings: Codable, Sendable, Equatable {
        public var placement: PlacementSettings?
        public var migration: MigrationSettings?
        public var drs: DRSSettings?
        public var dpm: DPMSettings?
        public var security: SecuritySettings?
        public var compliance: ComplianceRules?
        public var retention: RetentionSettings?
        public init(
            placement: PlacementSettings? = nil, migration: MigrationSettings? = nil, drs: DRSSettings? = nil, dpm: DPMSettings? = nil,
            security: SecuritySettings? = nil, compliance: ComplianceRules? = nil, retention: RetentionSettings? = nil
        ) {
            self.retention = retention
            self.placement = placement
            self.migration = migration
            self.drs = drs
            self.dpm = dpm
            self.security = security
            self.compliance = compliance
        }
    }

    /// How long the controller keeps its history: finished tasks, events and closed alarms older than
    /// this are deleted (the audit log is kept whole: it is the record of who changed what).
    public struct RetentionSettings: Codable, Sendable, Equatable {
        public var tasksDays: Int?
        public var eventsDays: Int?
        public var alarmsDays: Int?
        public static let defaultTasksDays = 7, defaultEventsDays = 30, defaultAlarmsDays = 90
        public init(tasksDays: Int? = nil, eventsDays: Int? = nil, alarmsDays: Int? = nil) {
            self.tasksDays = tasksDays
            self.eventsDays = eventsDays
            self.alarmsDays = alarmsDays
        }
    }

    /// What the controller does when the virtual layer changes behind its back.
    public struct SecuritySettings: Codable, Sendable, Equatable {
        /// `restore` (default: raise an alarm, then put the desired state back) or `alarm` (raise an
        /// alarm, change nothing).
        public var driftRepair: String?
        public init(driftRepair: String? = nil) { self.driftRepair = driftRepair }
    }

    /// Compliance rules over the desired state (`vsphere-ctl compliance`).
    public struct ComplianceRules: Codable, Sendable, Equatable {
        /// Every VM in a resource pool.
        public var requireResourcePool: Bool?
        /// Every VM with a memory limit / a CPU limit of its own.
        public var requireMemoryLimit: Bool?
        public var requireCPULimit: Bool?
        /// No VM with more vCPUs.
        public var maxVCPUs: Int?
        /// NICs only on these networks.
        public var allowedNetworks: [String]?
        /// Every VM pinned to a site.
        public var requireSite: Bool?
        public init(
            requireResourcePool: Bool? = nil, requireMemoryLimit: Bool? = nil, requireCPULimit: Bool? = nil, maxVCPUs: Int? = nil,
            allowedNetworks: [String]? = nil, requireSite: Bool? = nil
        ) {
            self.requireResourcePool = requireResourcePool
            self.requireMemoryLimit = requireMemoryLimit
            self.requireCPULimit = requireCPULimit
            self.maxVCPUs = maxVCPUs
            self.allowedNetworks = allowedNetworks
            self.requireSite = requireSite
        }
    }

    /// DRS: load balancing by live migration.
    public struct DRSSettings: Codable, Sendable, Equatable {
        /// `manual` (plans only; `drs apply` carries them out), `partiallyAutomated` (default: the same,
        /// with initial placement automatic, which it always is here) or `fullyAutomated` (the controller
        /// applies plans every `intervalSeconds`).
        public var automation: String?
        /// 1 (conservative: only rule violations) ... 5 (aggressive); default 3.
        public var migrationThreshold: Int?
        /// The least imbalance a move must remove (default 0.01).
        public var minGain: Double?
        /// Moves per plan at most (default 32).
        public var maxMoves: Int?
        /// How often a fully automated DRS plans (default 300).
        public var intervalSeconds: Int?
        /// Demand is smoothed over about this long (default 60).
        public var demandWindowSeconds: Int?
        public init(automation: String? = nil, migrationThreshold: Int? = nil, minGain: Double? = nil, maxMoves: Int? = nil, intervalSeconds: Int? = nil, demandWindowSeconds: Int? = nil) {
            self.automation = automation
            self.migrationThreshold = migrationThreshold
            self.minGain = minGain
            self.maxMoves = maxMoves
            self.intervalSeconds = intervalSeconds
            self.demandWindowSeconds = demandWindowSeconds
        }
    }

    /// DPM: consolidation and host power management.
    public struct DPMSettings: Codable, Sendable, Equatable {
        /// `off` (default), `manual` (`drs plan` shows power actions, `drs apply` carries them out) or
        /// `automated` (the controller carries them out when the hysteresis windows say so).
        public var automation: String?
        /// Target host utilization, percent (default 63), and the tolerance around it (default 18): hosts
        /// are woken above target + tolerance and packed below target − tolerance.
        public var targetUtilization: Int?
        public var tolerance: Int?
        /// How long demand must stay high before a host is woken (default 300) and low before hosts are
        /// packed and powered off (default 2400).
        public var powerOnSustainSeconds: Int?
        public var powerOffSustainSeconds: Int?
        /// Empty hosts kept powered on as headroom (default 0).
        public var spareHosts: Int?
        /// How long a woken host may take until its agent reports back (default 600).
        public var powerOnTimeoutSeconds: Int?
        public init(automation: String? = nil, targetUtilization: Int? = nil, tolerance: Int? = nil, powerOnSustainSeconds: Int? = nil, powerOffSustainSeconds: Int? = nil, spareHosts: Int? = nil, powerOnTimeoutSeconds: Int? = nil) {
            self.automation = automation
            self.targetUtilization = targetUtilization
            self.tolerance = tolerance
            self.powerOnSustainSeconds = powerOnSustainSeconds
            self.powerOffSustainSeconds = powerOffSustainSeconds
            self.spareHosts = spareHosts
            self.powerOnTimeoutSeconds = powerOnTimeoutSeconds
        }
    }

    /// Live migration (vMotion) settings of the cluster.
    public struct MigrationSettings: Codable, Sendable, Equatable {
        /// Concurrent outgoing and incoming migrations per host (default 2 and 2).
        public var maxOutgoingPerHost: Int?
        public var maxIncomingPerHost: Int?
        /// What all outgoing migrations of one host may use together, MiB/s (default: no cap).
        public var hostBandwidthMiBps: Int?
        /// The policy used when a migration names none (default `minimal-downtime`).
        public var defaultPolicy: String?
        /// How source libvirtd reaches the destination's: `tls` (default, qemu+tls) or `tcp`
        /// (qemu+tcp; for test beds only: the stream is not encrypted).
        public var transport: String?
        /// The operator vouches that `shared` pools are coherent between hosts even where libvirt cannot
        /// tell (a directory on a local file system that every host sees, as on the testbed); libvirt then
        /// migrates their disks without its shared-storage check. Default false.
        public var sharedStorageUnverifiable: Bool?

        public init(maxOutgoingPerHost: Int? = nil, maxIncomingPerHost: Int? = nil, hostBandwidthMiBps: Int? = nil, defaultPolicy: String? = nil, transport: String? = nil, sharedStorageUnverifiable: Bool? = nil) {
            self.sharedStorageUnverifiable = sharedStorageUnverifiable
            self.maxOutgoingPerHost = maxOutgoingPerHost
            self.maxIncomingPerHost = maxIncomingPerHost
            self.hostBandwidthMiBps = hostBandwidthMiBps
            self.defaultPolicy = defaultPolicy
            self.transport = transport
        }
    }

    public struct PlacementSettings: Codable, Sendable, Equatable {
        /// `spread` (default) or `pack`.
        public var strategy: String?
        /// vCPUs per physical CPU (default 4, as the reference install's 8 cores at 4:1).
        public var cpuOvercommit: Double?
        /// Memory is not overcommitted unless this is above 1 (default 1).
        public var memoryOvercommit: Double?
        public init(strategy: String? = nil, cpuOvercommit: Double? = nil, memoryOvercommit: Double? = nil) {
            self.strategy = strategy
            self.cpuOvercommit = cpuOvercommit
            self.memoryOvercommit = memoryOvercommit
        }
    }

    public struct Site: Codable, Sendable, Equatable {
        public var name: String
        public init(name: String) { self.name = name }
    }

    public struct Host: Codable, Sendable, Equatable {
        public var name: String
        public var site: String?
        /// The agent's URL, e.g. https://10.250.1.1:7443. Hosts of a simulation need none.
        public var agent: String?
        /// Simulation only: `connected` (default), `maintenance`, `poweredOff`, `disconnected`.
        public var state: String?
        public var power: Power?
        /// Simulation: the host's size (real hosts report theirs through the agent).
        public var capacity: Capacity?
        public init(name: String, site: String? = nil, agent: String? = nil, state: String? = nil, power: Power? = nil, capacity: Capacity? = nil) {
            self.name = name
            self.site = site
            self.agent = agent
            self.state = state
            self.power = power
            self.capacity = capacity
        }
    }

    public struct Capacity: Codable, Sendable, Equatable {
        public var cpus: Int
        public var memoryMiB: Int
        /// Core speed, for MHz reservations and limits (default 2000).
        public var cpuMHz: Int?
        public init(cpus: Int, memoryMiB: Int, cpuMHz: Int? = nil) {
            self.cpus = cpus
            self.memoryMiB = memoryMiB
            self.cpuMHz = cpuMHz
        }
    }

    /// A host power driver and its options (`ipmi`: address, username, interface, credential; `wol`:
    /// mac, broadcast, port, off; `command`: profile; `testbed`: host; `none`). Programs and files are
    /// never options: `credential`, `profile` and `off` name entries of the controller's own power
    /// configuration.
    public struct Power: Codable, Sendable, Equatable {
        public var driver: String
        public var options: [String: String]

        public init(driver: String, options: [String: String] = [:]) {
            self.driver = driver
            self.options = options
        }

        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: Key.self)
            driver = try c.decode(String.self, forKey: Key(stringValue: "driver"))
            var options: [String: String] = [:]
            for key in c.allKeys where key.stringValue != "driver" {
                options[key.stringValue] = try c.decode(String.self, forKey: key)
            }
            self.options = options
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: Key.self)
            try c.encode(driver, forKey: Key(stringValue: "driver"))
            for (k, v) in options { try c.encode(v, forKey: Key(stringValue: k)) }
        }

        static let optionsByDriver: [String: Set<String>] = [
            "ipmi": ["address", "username", "credential", "interface"],
            "wol": ["mac", "broadcast", "port", "off"],
            "command": ["profile"],
            "testbed": ["host"],
            "none": [],
        ]
    }

    public struct StoragePool: Codable, Sendable, Equatable {
        public var name: String
        /// `dir`, `shared`, `logical` or `rbd`.
        public var type: String
        public var path: String?
        public var volumeGroup: String?
        /// `shared`: the site whose hosts all mount `path` (default: every host).
        public var site: String?
        /// Only these hosts see the pool (default: every host, or the site's).
        public var hosts: [String]?
        /// `rbd`: the Ceph pool, its monitors, the cephx user and the libvirt secret holding its key.
        public var rbd: RBD?
        public init(name: String, type: String, path: String? = nil, volumeGroup: String? = nil, site: String? = nil, hosts: [String]? = nil, rbd: RBD? = nil) {
            self.name = name
            self.type = type
            self.path = path
            self.volumeGroup = volumeGroup
            self.site = site
            self.hosts = hosts
            self.rbd = rbd
        }

        public struct RBD: Codable, Sendable, Equatable {
            public var pool: String
            public var monitors: [String]
            public var user: String?
            public var secretUUID: String?
            public init(pool: String, monitors: [String], user: String? = nil, secretUUID: String? = nil) {
                self.pool = pool
                self.monitors = monitors
                self.user = user
                self.secretUUID = secretUUID
            }
        }

        /// Whether a host of `site` named `host` sees this pool.
        public func isSeen(by host: String, site: String?) -> Bool {
            if let hosts, !hosts.contains(host) { return false }
            if let s = self.site, s != site { return false }
            return true
        }
    }

    /// A network of the distributed switch: one segment, present on every host as a Linux bridge.
    /// `bridge` networks use a bridge the operator made on each host, or, with `vlan`, a bridge the agent
    /// makes over that VLAN of the host's uplink; `vxlan` networks a bridge the agent makes over a VXLAN
    /// tunnel (one VNI per network) to every other host, across sites too.
    public struct Network: Codable, Sendable, Equatable {
        public var name: String
        /// `bridge` (default) or `vxlan`.
        public var type: String?
        public var vlan: Int?
        public var vni: Int?
        /// The Linux bridge on each host that carries this network (default: the network's name for a
        /// plain bridge, `vsv<VLAN>` for a VLAN, `vsx<VNI>` for a VXLAN network).
        public var bridge: String?
        /// The host interface VLAN-tagged frames (or the VXLAN tunnel) ride on (default: the agent's
        /// `uplink` setting; a VXLAN tunnel otherwise follows the route to each peer).
        public var uplink: String?
        /// The segment's MTU (default 1450 for VXLAN: 50 bytes of encapsulation under a 1500-byte uplink).
        public var mtu: Int?
        /// Anti-spoofing (libvirt nwfilter `clean-traffic`: a guest sends only from its own MAC and the
        /// IPv4 address it first uses, no forged ARP; IPv6 and other non-IPv4 protocols are dropped) on
        /// every NIC of the network unless a port group says otherwise. Default true.
        public var antiSpoofing: Bool?
        /// Default traffic shaping of the network's NICs.
        public var bandwidth: VMSpec.Bandwidth?
        /// Named NIC policies within the network (vSphere's port groups).
        public var portGroups: [PortGroup]?
        public init(name: String, type: String? = nil, vlan: Int? = nil, vni: Int? = nil, bridge: String? = nil, uplink: String? = nil,
                    mtu: Int? = nil, antiSpoofing: Bool? = nil, bandwidth: VMSpec.Bandwidth? = nil, portGroups: [PortGroup]? = nil) {
            self.name = name
            self.type = type
            self.vlan = vlan
            self.vni = vni
            self.bridge = bridge
            self.uplink = uplink
            self.mtu = mtu
            self.antiSpoofing = antiSpoofing
            self.bandwidth = bandwidth
            self.portGroups = portGroups
        }

        public struct PortGroup: Codable, Sendable, Equatable {
            public var name: String
            public var antiSpoofing: Bool?
            public var bandwidth: VMSpec.Bandwidth?
            public init(name: String, antiSpoofing: Bool? = nil, bandwidth: VMSpec.Bandwidth? = nil) {
                self.name = name
                self.antiSpoofing = antiSpoofing
                self.bandwidth = bandwidth
            }
        }

        /// `bridge`, `vlan` (a bridge network with a VLAN) or `vxlan`: how a host carries the segment.
        public var mode: String {
            if type == "vxlan" { return "vxlan" }
            return vlan == nil ? "bridge" : "vlan"
        }

        /// The bridge each host plugs this network's NICs into.
        public var hostBridge: String {
            if let bridge { return bridge }
            switch mode {
            case "vxlan": return "vsx\(vni ?? 0)"
            case "vlan": return "vsv\(vlan ?? 0)"
            default: return name
            }
        }

        /// The segment's MTU as NICs see it (nil: the bridge's own).
        public var segmentMTU: Int? { mtu ?? (mode == "vxlan" ? 1450 : nil) }
    }

    public struct ResourcePool: Codable, Sendable, Equatable {
        public var name: String
        public var parent: String?
        public var cpu: ServiceLevels.CPULevels?
        public var memory: ServiceLevels.MemoryLevels?
        public init(name: String, parent: String? = nil, cpu: ServiceLevels.CPULevels? = nil, memory: ServiceLevels.MemoryLevels? = nil) {
            self.name = name
            self.parent = parent
            self.cpu = cpu
            self.memory = memory
        }
    }
}
