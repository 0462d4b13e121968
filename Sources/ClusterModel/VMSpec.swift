/// The VM spec of the contract as the agent receives it: what runs, with what resources and service levels.
///
/// The controller resolves manifest-level references (storage pools, networks) into host-level facts
/// (disk paths, bridge names) before it sends a spec to an agent; both forms share this type.
public struct VMSpec: Codable, Sendable, Equatable {
    public var name: String
    /// Stable identity across hosts; libvirt generates one when absent.
    public var uuid: String?
    public var cpus: Int
    public var memoryMiB: Int
    public var topology: CPUTopology?
    /// QEMU machine type, e.g. `pc` or `q35`. Defaults to `pc`.
    public var machine: String?
    /// A named CPU model (`qemu64`, `Haswell`, ...) or `host-model`; host-passthrough is refused on
    /// some nested hosts, so the model stays a setting. Defaults to `qemu64`.
    public var cpuModel: String?
    public var boot: Boot?
    public var disks: [Disk]
    public var nics: [NIC]
    public var resources: ServiceLevels?
    /// A graphical console (`{"type": "vnc"}`), listening on the host's loopback unless `listen` says
    /// otherwise. Every connection to it is an event and raises a console-connection alarm.
    public var graphics: Graphics?
    public var resourcePool: String?
    /// Host level: the pool's root-to-leaf names, which the controller resolves from `resourcePool`; the
    /// domain runs in that pool's cgroup partition (`/machine/gold/silver`).
    public var resourcePoolPath: [String]?
    /// Manifest level: where the VM may run.
    public var placement: Placement?
    /// Manifest level: `running` (default) or `stopped`.
    public var powerState: String?
    /// Simulation and observed state: the host the VM runs on.
    public var host: String?

    public init(
        name: String, uuid: String? = nil, cpus: Int, memoryMiB: Int, topology: CPUTopology? = nil,
        machine: String? = nil, cpuModel: String? = nil, boot: Boot? = nil, disks: [Disk] = [],
        nics: [NIC] = [], resources: ServiceLevels? = nil, resourcePool: String? = nil,
        placement: Placement? = nil, powerState: String? = nil, host: String? = nil, resourcePoolPath: [String]? = nil,
        graphics: Graphics? = nil
    ) {
        self.graphics = graphics
        self.resourcePoolPath = resourcePoolPath
        self.placement = placement
        self.powerState = powerState
        self.host = host
        self.name = name
        self.uuid = uuid
        self.cpus = cpus
        self.memoryMiB = memoryMiB
        self.topology = topology
        self.machine = machine
        self.cpuModel = cpuModel
        self.boot = boot
        self.disks = disks
        self.nics = nics
        self.resources = resources
        self.resourcePool = resourcePool
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, uuid, cpus, memoryMiB, topology, machine, cpuModel, boot, disks, nics, resources, resourcePool, resourcePoolPath, graphics
        case placement, powerState, host
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        uuid = try c.decodeIfPresent(String.self, forKey: .uuid)
        cpus = try c.decode(Int.self, forKey: .cpus)
        memoryMiB = try c.decode(Int.self, forKey: .memoryMiB)
        topology = try c.decodeIfPresent(CPUTopology.self, forKey: .topology)
        machine = try c.decodeIfPresent(String.self, forKey: .machine)
        cpuModel = try c.decodeIfPresent(String.self, forKey: .cpuModel)
        boot = try c.decodeIfPresent(Boot.self, forKey: .boot)
        disks = try c.decodeIfPresent([Disk].self, forKey: .disks) ?? []
        nics = try c.decodeIfPresent([NIC].self, forKey: .nics) ?? []
        resources = try c.decodeIfPresent(ServiceLevels.self, forKey: .resources)
        resourcePool = try c.decodeIfPresent(String.self, forKey: .resourcePool)
        resourcePoolPath = try c.decodeIfPresent([String].self, forKey: .resourcePoolPath)
        graphics = try c.decodeIfPresent(Graphics.self, forKey: .graphics)
        placement = try c.decodeIfPresent(Placement.self, forKey: .placement)
        powerState = try c.decodeIfPresent(String.self, forKey: .powerState)
        host = try c.decodeIfPresent(String.self, forKey: .host)
    }

    public struct Graphics: Codable, Sendable, Equatable {
        /// `vnc`.
        public var type: String
        /// The address it listens on (default 127.0.0.1: reach it through the host).
        public var listen: String?
        public init(type: String = "vnc", listen: String? = nil) {
            self.type = type
            self.listen = listen
        }
    }

    /// Placement constraints: a site, a set of allowed hosts, VMs to keep apart or together.
    public struct Placement: Codable, Sendable, Equatable {
        public var site: String?
        public var hosts: [String]?
        public var antiAffinity: [String]?
        public var affinity: [String]?
        public init(site: String? = nil, hosts: [String]? = nil, antiAffinity: [String]? = nil, affinity: [String]? = nil) {
            self.site = site
            self.hosts = hosts
            self.antiAffinity = antiAffinity
            self.affinity = affinity
        }
    }

    public struct CPUTopology: Codable, Sendable, Equatable {
        public var sockets: Int
        public var cores: Int
        public var threads: Int
        public init(sockets: Int, cores: Int, threads: Int) {
            self.sockets = sockets
            self.cores = cores
            self.threads = threads
        }
    }

    /// Direct kernel boot.
    public struct Boot: Codable, Sendable, Equatable {
        public var kernel: String
        public var initrd: String?
        public var cmdline: String?
        public init(kernel: String, initrd: String? = nil, cmdline: String? = nil) {
            self.kernel = kernel
            self.initrd = initrd
            self.cmdline = cmdline
        }
    }

    /// The guest's name of disk `index`: vda, vdb, ... vdz (the domain XML and storage moves agree on it).
    public static func diskTarget(_ index: Int) -> String {
        "vd" + String(UnicodeScalar(UInt8(97 + index)))
    }

    public struct Disk: Codable, Sendable, Equatable {
        /// Host path of the image (agent level).
        public var path: String?
        /// `qcow2` or `raw`; defaults to `qcow2`.
        public var format: String?
        public var readonly: Bool?
        /// Manifest level: the storage pool, size and source image the controller resolves into `path`.
        public var pool: String?
        public var sizeGiB: Int?
        /// A template image: a volume of the disk's pool (`VOLUME`), `POOL/VOLUME`, or an absolute path
        /// on the hosts.
        public var from: String?
        /// With `from`: `linked` (default: a qcow2 overlay on the template) or `full` (a copy).
        public var clone: String?
        /// Host level: a Ceph RBD image the disk attaches as a network disk (a volume of an rbd pool).
        public var rbd: RBDImage?

        public struct RBDImage: Codable, Sendable, Equatable {
            /// `CEPHPOOL/IMAGE`.
            public var image: String
            /// `host`, `host:port` or `[v6]:port`.
            public var monitors: [String]
            public var user: String?
            /// The libvirt secret holding the user's key.
            public var secretUUID: String?
            public init(image: String, monitors: [String], user: String? = nil, secretUUID: String? = nil) {
                self.image = image
                self.monitors = monitors
                self.user = user
                self.secretUUID = secretUUID
            }
        }
        /// A volume's name in a storage pool: 1 to 128 letters, digits, `.`, `_`, `-`, starting with a
        /// letter or digit.
        public static func isVolumeName<S: StringProtocol>(_ v: S) -> Bool {
            guard let f = v.first, f.isASCII, f.isLetter || f.isNumber, v.count <= 128 else { return false }
            return v.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }
        }

        /// `from` as an agent takes it (`POOL/VOLUME` or an absolute path); nil when malformed.
        public static func templateReference(_ from: String, pool: String) -> String? {
            if from.hasPrefix("/") { return VMSpec.isAbsolutePath(from) && !from.split(separator: "/").contains("..") ? from : nil }
            let parts = from.split(separator: "/", omittingEmptySubsequences: false)
            if parts.count == 1, isVolumeName(parts[0]) { return "\(pool)/\(from)" }
            if parts.count == 2, Names.isValid(String(parts[0])), isVolumeName(parts[1]) { return from }
            return nil
        }

        public init(
            path: String? = nil, format: String? = nil, readonly: Bool? = nil, pool: String? = nil,
            sizeGiB: Int? = nil, from: String? = nil, clone: String? = nil, rbd: RBDImage? = nil
        ) {
            self.rbd = rbd
            self.clone = clone
            self.path = path
            self.format = format
            self.readonly = readonly
            self.pool = pool
            self.sizeGiB = sizeGiB
            self.from = from
        }
    }

    public struct NIC: Codable, Sendable, Equatable {
        /// Manifest level: the cluster network's name.
        public var network: String?
        /// Manifest level: a port group of that network (its NIC policy applies).
        public var portGroup: String?
        /// Host level: the Linux bridge the NIC plugs into.
        public var bridge: String?
        /// Given, or allocated by the controller (unique in the cluster) and kept in the desired state.
        public var mac: String?
        /// `virtio` (default), `e1000`, `rtl8139`.
        public var model: String?
        /// Traffic shaping of this NIC (overrides its port group's and network's).
        public var bandwidth: Bandwidth?
        /// Host level: the libvirt nwfilter on the NIC (`clean-traffic` from the network's anti-spoofing).
        public var filter: String?
        /// Host level: the segment's MTU.
        public var mtu: Int?
        public init(network: String? = nil, portGroup: String? = nil, bridge: String? = nil, mac: String? = nil, model: String? = nil,
                    bandwidth: Bandwidth? = nil, filter: String? = nil, mtu: Int? = nil) {
            self.network = network
            self.portGroup = portGroup
            self.bridge = bridge
            self.mac = mac
            self.model = model
            self.bandwidth = bandwidth
            self.filter = filter
            self.mtu = mtu
        }
    }

    /// libvirt `<bandwidth>`: per direction an average and optional peak rate in kilobytes per second and
    /// a burst in KiB. Inbound is traffic to the guest.
    public struct Bandwidth: Codable, Sendable, Equatable {
        public var inbound: Rate?
        public var outbound: Rate?
        public init(inbound: Rate? = nil, outbound: Rate? = nil) {
            self.inbound = inbound
            self.outbound = outbound
        }

        public struct Rate: Codable, Sendable, Equatable {
            public var averageKBps: Int
            public var peakKBps: Int?
            public var burstKiB: Int?
            public init(averageKBps: Int, peakKBps: Int? = nil, burstKiB: Int? = nil) {
                self.averageKBps = averageKBps
                self.peakKBps = peakKBps
                self.burstKiB = burstKiB
            }
        }

        func validate(_ path: String) -> [ValidationProblem] {
            var out: [ValidationProblem] = []
            for (dir, r) in [("inbound", inbound), ("outbound", outbound)] {
                guard let r else { continue }
                let p = "\(path).\(dir)"
                if !(1...100_000_000).contains(r.averageKBps) { out.append(.init("\(p).averageKBps", "must be between 1 and 100000000")) }
                if let v = r.peakKBps {
                    if !(1...100_000_000).contains(v) { out.append(.init("\(p).peakKBps", "must be between 1 and 100000000")) }
                    else if v < r.averageKBps { out.append(.init("\(p).peakKBps", "must not be below averageKBps (\(r.averageKBps))")) }
                }
                if let v = r.burstKiB, !(1...100_000_000).contains(v) { out.append(.init("\(p).burstKiB", "must be between 1 and 100000000")) }
            }
            if inbound == nil && outbound == nil { out.append(.init(path, "needs inbound, outbound or both")) }
            return out
        }
    }
}

/// vSphere-style service levels: reservation, shares and limit for CPU and memory.
public struct ServiceLevels: Codable, Sendable, Equatable {
    public var cpu: CPULevels?
    public var memory: MemoryLevels?
    public init(cpu: CPULevels? = nil, memory: MemoryLevels? = nil) {
        self.cpu = cpu
        self.memory = memory
    }

    public struct CPULevels: Codable, Sendable, Equatable {
        public var reservationMHz: Int?
        public var shares: Shares?
        public var limitMHz: Int?
        /// Resource pools only: whether children may reserve beyond the pool's own reservation
        /// (borrowing from its parent), as vSphere's expandable reservation. Default true.
        public var expandable: Bool?
        public init(reservationMHz: Int? = nil, shares: Shares? = nil, limitMHz: Int? = nil, expandable: Bool? = nil) {
            self.reservationMHz = reservationMHz
            self.shares = shares
            self.limitMHz = limitMHz
            self.expandable = expandable
        }
    }

    public struct MemoryLevels: Codable, Sendable, Equatable {
        public var reservationMiB: Int?
        public var shares: Shares?
        public var limitMiB: Int?
        /// Resource pools only (see CPULevels.expandable).
        public var expandable: Bool?
        public init(reservationMiB: Int? = nil, shares: Shares? = nil, limitMiB: Int? = nil, expandable: Bool? = nil) {
            self.reservationMiB = reservationMiB
            self.shares = shares
            self.limitMiB = limitMiB
            self.expandable = expandable
        }
    }
}

/// Shares as vSphere names them (`low`, `normal`, `high`) or a custom number.
public enum Shares: Codable, Sendable, Equatable {
    case low, normal, high
    case custom(Int)

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let n = try? c.decode(Int.self) {
            self = .custom(n)
            return
        }
        let s = try c.decode(String.self)
        switch s {
        case "low": self = .low
        case "normal": self = .normal
        case "high": self = .high
        default:
            throw DecodingError.dataCorruptedError(
                in: c, debugDescription: "must be low, normal, high or a number")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .low: try c.encode("low")
        case .normal: try c.encode("normal")
        case .high: try c.encode("high")
        case .custom(let n): try c.encode(n)
        }
    }

    /// vSphere's convention: per vCPU, low = 500, normal = 1000, high = 2000 shares.
    public func cpuShares(vcpus: Int) -> Int {
        switch self {
        case .low: return 500 * vcpus
        case .normal: return 1000 * vcpus
        case .high: return 2000 * vcpus
        case .custom(let n): return n
        }
    }
}
