import ClusterModel
import FoundationEssentials

public enum DomainXMLError: Error, Sendable, Equatable, CustomStringConvertible {
    case malformed(String)
    public var description: String {
        switch self {
        case .malformed(let m): return "domain XML: \(m)"
        }
    }
}

/// Which libvirt domain type runs the guest: `kvm` (hardware) or `qemu` (TCG, software emulation).
public enum DomainType: String, Sendable, Codable {
    case kvm
    case qemu
}

/// Host-side facts the converter needs besides the spec.
public struct DomainOptions: Sendable, Equatable {
    public var type: DomainType
    /// Host core speed, to turn a MHz limit into a CFS quota.
    public var hostCoreMHz: Int
    /// Whether `<memtune><hard_limit>` goes into the definition. libvirt also sets QEMU's locked-memory
    /// rlimit to that size, which needs CAP_SYS_RESOURCE; without it the agent applies the limit live
    /// after start instead.
    public var hardLimitInDefinition: Bool
    /// Where the serial console is logged (virtlogd), so the agent can serve it.
    public var consoleLogPath: String?
    /// Host CPUs the guest's vCPUs may run on (libvirt CPU list syntax); nil: any.
    public var cpuset: String?

    public init(type: DomainType, hostCoreMHz: Int, hardLimitInDefinition: Bool = true, consoleLogPath: String? = nil, cpuset: String? = nil) {
        self.cpuset = cpuset
        self.type = type
        self.hostCoreMHz = hostCoreMHz
        self.hardLimitInDefinition = hardLimitInDefinition
        self.consoleLogPath = consoleLogPath
    }
}

/// A domain as libvirt describes it, parsed back from domain XML.
public struct DomainDefinition: Sendable, Equatable {
    public var type: String
    public var name: String
    public var uuid: String?
    public var vcpus: Int
    public var memoryKiB: Int
    public var machine: String?
    public var kernel: String?
    public var initrd: String?
    public var cmdline: String?
    public var cpuModel: String?
    public var topology: VMSpec.CPUTopology?
    public var disks: [Disk]
    public var nics: [NIC]
    public var tuning: HostTuning
    public var consoleLogPath: String?
    /// The spec the domain was defined from (our metadata), when present.
    public var spec: VMSpec?
    /// The resource partition (cgroup) the domain runs in, e.g. `/machine/gold`; nil: libvirt's default.
    public var partition: String? = nil

    public struct Disk: Sendable, Equatable {
        /// A file or block device; `rbd:CEPHPOOL/IMAGE` for a network disk.
        public var path: String
        public var format: String
        public var target: String
        public var readonly: Bool
        /// A network (RBD) disk: shared by every host that reaches the Ceph cluster, nothing to copy.
        public var network: Bool = false
    }

    public struct NIC: Sendable, Equatable {
        public var bridge: String?
        public var network: String?
        public var mac: String?
        public var model: String?
        public var filter: String? = nil
        public var mtu: Int? = nil
        public var bandwidth: VMSpec.Bandwidth? = nil
    }
}

public enum DomainXML {
    public static let metadataNamespace = "https://vsphere.example/xmlns/vm/1"

    /// VM spec → libvirt domain XML.
    public static func build(_ spec: VMSpec, options: DomainOptions) -> String {
        let doc = XMLDocument(root: "domain")
        let domain = doc.root
        domain.set("type", options.type.rawValue)
        domain.add("name", text: spec.name)
        if let uuid = spec.uuid { domain.add("uuid", text: uuid.lowercased()) }

        let meta = domain.add("metadata")
        let vm = meta.add("vm")
        vm.setNamespace(vm.declareNamespace(prefix: "vsphere", href: metadataNamespace))
        if let pool = spec.resourcePool { vm.add("resourcePool", text: pool) }
        vm.add("spec", text: specJSON(spec))

        domain.add("memory", ["unit": "KiB"], text: String(spec.memoryMiB * 1024))
        domain.add("currentMemory", ["unit": "KiB"], text: String(spec.memoryMiB * 1024))
        let vcpu = domain.add("vcpu", ["placement": "static"], text: String(spec.cpus))
        if let cpuset = options.cpuset { vcpu.set("cpuset", cpuset) }

        let tuning = HostTuning.from(spec, hostCoreMHz: options.hostCoreMHz)
        if tuning.cpuShares != nil || tuning.cpuQuotaMicros != nil {
            let cputune = domain.add("cputune")
            if let shares = tuning.cpuShares { cputune.add("shares", text: String(shares)) }
            if let period = tuning.cpuPeriodMicros, let quota = tuning.cpuQuotaMicros {
                cputune.add("global_period", text: String(period))
                cputune.add("global_quota", text: String(quota))
            }
        }
        let hard = options.hardLimitInDefinition ? tuning.memoryHardLimitKiB : nil
        if hard != nil || tuning.memorySoftLimitKiB != nil {
            let memtune = domain.add("memtune")
            if let hard { memtune.add("hard_limit", ["unit": "KiB"], text: String(hard)) }
            if let soft = tuning.memorySoftLimitKiB { memtune.add("soft_limit", ["unit": "KiB"], text: String(soft)) }
        }

        // The resource pool's cgroup partition (the agent creates it before the domain starts).
        if let path = spec.resourcePoolPath, !path.isEmpty {
            domain.add("resource").add("partition", text: PoolDivvy.partition(path))
        }

        let os = domain.add("os")
        os.add("type", ["arch": "x86_64", "machine": spec.machine ?? "pc"], text: "hvm")
        if let boot = spec.boot {
            os.add("kernel", text: boot.kernel)
            if let initrd = boot.initrd { os.add("initrd", text: initrd) }
            if let cmdline = boot.cmdline { os.add("cmdline", text: cmdline) }
        } else {
            os.add("boot", ["dev": "hd"])
        }

        let features = domain.add("features")
        features.add("acpi")
        features.add("apic")

        let model = spec.cpuModel ?? "qemu64"
        let cpu = domain.add("cpu")
        if model == "host-model" || model == "host-passthrough" {
            cpu.set("mode", model)
        } else {
            cpu.set("mode", "custom")
            cpu.set("match", "exact")
            cpu.set("check", "none")
            cpu.add("model", ["fallback": "allow"], text: model)
        }
        let topo = spec.topology ?? .init(sockets: 1, cores: spec.cpus, threads: 1)
        cpu.add("topology", [
            "sockets": String(topo.sockets), "dies": "1", "cores": String(topo.cores), "threads": String(topo.threads),
        ])

        domain.add("clock", ["offset": "utc"])
        domain.add("on_poweroff", text: "destroy")
        domain.add("on_reboot", text: "restart")
        domain.add("on_crash", text: "destroy")

        let devices = domain.add("devices")
        for (i, disk) in spec.disks.enumerated() {
            if let r = disk.rbd {
                // Ceph RBD through QEMU's librbd: a network disk, raw, the key in a libvirt secret.
                let d = devices.add("disk", ["type": "network", "device": "disk"])
                d.add("driver", ["name": "qemu", "type": "raw", "cache": "none", "discard": "unmap"])
                if let user = r.user {
                    let auth = d.add("auth", ["username": user])
                    if let uuid = r.secretUUID { auth.add("secret", ["type": "ceph", "uuid": uuid]) }
                }
                let source = d.add("source", ["protocol": "rbd", "name": r.image])
                for m in r.monitors {
                    let (host, port) = StorageXML.monitor(m)
                    let h = source.add("host", ["name": host])
                    if let port { h.set("port", port) }
                }
                d.add("target", ["dev": diskTarget(i), "bus": "virtio"])
                if disk.readonly == true { d.add("readonly") }
                continue
            }
            guard let path = disk.path else { continue }
            // A host block device (an LVM volume of a logical pool) is a block disk; QEMU refuses it
            // through its file driver.
            let block = path.hasPrefix("/dev/")
            let d = devices.add("disk", ["type": block ? "block" : "file", "device": "disk"])
            d.add("driver", ["name": "qemu", "type": disk.format ?? "qcow2", "cache": "none", "discard": "unmap"])
            d.add("source", [block ? "dev" : "file": path])
            d.add("target", ["dev": diskTarget(i), "bus": "virtio"])
            if disk.readonly == true { d.add("readonly") }
        }
        for nic in spec.nics {
            let iface: XMLElement
            if let bridge = nic.bridge {
                iface = devices.add("interface", ["type": "bridge"])
                iface.add("source", ["bridge": bridge])
            } else {
                iface = devices.add("interface", ["type": "network"])
                iface.add("source", ["network": nic.network ?? "default"])
            }
            if let mac = nic.mac { iface.add("mac", ["address": mac.lowercased()]) }
            iface.add("model", ["type": nic.model ?? "virtio"])
            if let m = nic.mtu { iface.add("mtu", ["size": String(m)]) }
            if let b = nic.bandwidth {
                let bw = iface.add("bandwidth")
                for (dir, r) in [("inbound", b.inbound), ("outbound", b.outbound)] {
                    guard let r else { continue }
                    let e = bw.add(dir, ["average": String(r.averageKBps)])
                    if let p = r.peakKBps { e.set("peak", String(p)) }
                    if let v = r.burstKiB { e.set("burst", String(v)) }
                }
            }
            // Anti-spoofing: libvirt learns the guest's IP address from its first packets (the
            // filter's default) and then drops frames from any other MAC or IP address.
            if let f = nic.filter { iface.add("filterref", ["filter": f]) }
        }
        if let g = spec.graphics {
            let listen = g.listen ?? "127.0.0.1"
            let graphics = devices.add("graphics", ["type": g.type, "autoport": "yes", "listen": listen])
            graphics.add("listen", ["type": "address", "address": listen])
            devices.add("video").add("model", ["type": "vga"])
        }
        let serial = devices.add("serial", ["type": "pty"])
        serial.add("target", ["port": "0"])
        if let log = options.consoleLogPath { serial.add("log", ["file": log, "append": "off"]) }
        let console = devices.add("console", ["type": "pty"])
        console.add("target", ["type": "serial", "port": "0"])
        let balloon = devices.add("memballoon", ["model": "virtio"])
        balloon.add("stats", ["period": "5"])
        return doc.serialized()
    }

    /// libvirt domain XML → what it defines.
    public static func parse(_ xml: String) throws(DomainXMLError) -> DomainDefinition {
        let doc = try XMLDocument(parsing: xml)
        let root = doc.root
        guard root.name == "domain" else { throw .malformed("root element is <\(root.name)>, not <domain>") }
        guard let name = root.child("name")?.text else { throw .malformed("no <name>") }
        guard let vcpus = root.child("vcpu").flatMap({ Int($0.text) }) else { throw .malformed("no <vcpu>") }
        guard let memoryElement = root.child("memory"), let memory = Int(memoryElement.text) else {
            throw .malformed("no <memory>")
        }
        var def = DomainDefinition(
            type: root.attribute("type") ?? "", name: name, uuid: root.child("uuid")?.text, vcpus: vcpus,
            memoryKiB: toKiB(memory, unit: memoryElement.attribute("unit")), machine: nil, kernel: nil,
            initrd: nil, cmdline: nil, cpuModel: nil, topology: nil, disks: [], nics: [], tuning: HostTuning(),
            consoleLogPath: nil, spec: nil)
        if let os = root.child("os") {
            def.machine = os.child("type")?.attribute("machine")
            def.kernel = os.child("kernel")?.text
            def.initrd = os.child("initrd")?.text
            def.cmdline = os.child("cmdline")?.text
        }
        if let cpu = root.child("cpu") {
            let mode = cpu.attribute("mode")
            def.cpuModel = (mode == "host-model" || mode == "host-passthrough") ? mode : cpu.child("model")?.text
            if let t = cpu.child("topology"),
                let s = t.attribute("sockets").flatMap(Int.init), let c = t.attribute("cores").flatMap(Int.init),
                let th = t.attribute("threads").flatMap(Int.init)
            {
                def.topology = .init(sockets: s, cores: c, threads: th)
            }
        }
        if let cputune = root.child("cputune") {
            def.tuning.cpuShares = cputune.child("shares").flatMap { Int($0.text) }
            def.tuning.cpuPeriodMicros = cputune.child("global_period").flatMap { Int($0.text) }
            def.tuning.cpuQuotaMicros = cputune.child("global_quota").flatMap { Int($0.text) }
        }
        if let memtune = root.child("memtune") {
            def.tuning.memoryHardLimitKiB = memtune.child("hard_limit").flatMap { e in Int(e.text).map { toKiB($0, unit: e.attribute("unit")) } }
            def.tuning.memorySoftLimitKiB = memtune.child("soft_limit").flatMap { e in Int(e.text).map { toKiB($0, unit: e.attribute("unit")) } }
        }
        def.partition = root.child("resource")?.child("partition")?.text
        if let devices = root.child("devices") {
            for d in devices.all("disk") where d.attribute("device") == "disk" {
                let source = d.child("source")
                let network = d.attribute("type") == "network"
                guard let path = network ? source?.attribute("name").map({ "\(source?.attribute("protocol") ?? "network"):\($0)" })
                        : source?.attribute("file") ?? source?.attribute("dev") else { continue }
                def.disks.append(.init(
                    path: path, format: d.child("driver")?.attribute("type") ?? "raw",
                    target: d.child("target")?.attribute("dev") ?? "", readonly: d.child("readonly") != nil, network: network))
            }
            for i in devices.all("interface") {
                let source = i.child("source")
                func rate(_ e: XMLElement?) -> VMSpec.Bandwidth.Rate? {
                    guard let e, let avg = e.attribute("average").flatMap({ Int($0) }) else { return nil }
                    return .init(averageKBps: avg, peakKBps: e.attribute("peak").flatMap { Int($0) }, burstKiB: e.attribute("burst").flatMap { Int($0) })
                }
                let bw = i.child("bandwidth").map { VMSpec.Bandwidth(inbound: rate($0.child("inbound")), outbound: rate($0.child("outbound"))) }
                def.nics.append(.init(
                    bridge: source?.attribute("bridge"), network: source?.attribute("network"),
                    mac: i.child("mac")?.attribute("address"), model: i.child("model")?.attribute("type"),
                    filter: i.child("filterref")?.attribute("filter"), mtu: i.child("mtu")?.attribute("size").flatMap { Int($0) },
                    bandwidth: bw))
            }
            def.consoleLogPath = devices.child("serial")?.child("log")?.attribute("file")
        }
        if let vm = root.child("metadata")?.child("vm"), let json = vm.child("spec")?.text {
            def.spec = try? JSONDecoder().decode(VMSpec.self, from: Data(json.utf8))
        }
        return def
    }

    /// vda, vdb, ... vdz.
    public static func diskTarget(_ index: Int) -> String { VMSpec.diskTarget(index) }

    static func specJSON(_ spec: VMSpec) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: (try? encoder.encode(spec)) ?? Data(), as: UTF8.self)
    }

    static func toKiB(_ value: Int, unit: String?) -> Int {
        switch unit?.lowercased() {
        case nil, "kib", "k": return value
        case "b", "bytes": return value / 1024
        case "mib", "m": return value * 1024
        case "gib", "g": return value * 1024 * 1024
        case "kb": return value * 1000 / 1024
        case "mb": return value * 1_000_000 / 1024
        default: return value
        }
    }
}

/// The parts of libvirt's host capabilities XML the agent reports.
public enum CapabilitiesXML {
    public struct Cell: Sendable, Equatable {
        public var id: Int
        public var memoryKiB: Int
        public var cpus: [Int]
    }

    /// NUMA cells of `<host><topology><cells>`.
    public static func numaCells(_ xml: String) throws(DomainXMLError) -> [Cell] {
        let doc = try XMLDocument(parsing: xml)
        guard let cells = doc.root.child("host")?.child("topology")?.child("cells") else { return [] }
        return cells.all("cell").map { cell in
            let mem = cell.child("memory")
            return Cell(
                id: cell.attribute("id").flatMap(Int.init) ?? 0,
                memoryKiB: mem.flatMap { m in Int(m.text).map { DomainXML.toKiB($0, unit: m.attribute("unit")) } } ?? 0,
                cpus: cell.child("cpus")?.all("cpu").compactMap { $0.attribute("id").flatMap(Int.init) } ?? [])
        }
    }

    /// The host CPU's model name (`<host><cpu><model>`), for host-model and host-passthrough guests.
    public static func hostCPUModel(_ xml: String) throws(DomainXMLError) -> String? {
        let doc = try XMLDocument(parsing: xml)
        return doc.root.child("host")?.child("cpu")?.child("model")?.text
    }

    /// CPU models QEMU can give guests on this host: `<cpu><mode name="custom">` models marked usable in
    /// the domain capabilities.
    public static func usableCPUModels(domainCapabilities xml: String) throws(DomainXMLError) -> [String] {
        let doc = try XMLDocument(parsing: xml)
        guard let modes = doc.root.child("cpu")?.all("mode"),
            let custom = modes.first(where: { $0.attribute("name") == "custom" }), custom.attribute("supported") == "yes"
        else { return [] }
        return custom.all("model").filter { $0.attribute("usable") == "yes" }.map(\.text).sorted()
    }
}
