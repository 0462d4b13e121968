import AgentAPI
import ClusterModel
import DomainXML
import FoundationEssentials
import Glibc
import Libvirt
import Logging
import ServerSupport
import Synchronization
import SystemFiles

/// The agent's operations on its host's libvirtd. Every libvirt call runs on the libvirt thread pool;
/// every failure becomes an `AgentError`; a lost connection is reported to the supervisor.
public final class HostAgent: Sendable {
    public static let version = "0.1.0"

    public let config: AgentConfig
    public let supervisor: LibvirtSupervisor
    public let hub: EventHub
    /// Outgoing live migrations.
    public let migrations = MigrationRunner()
    public let accelerator: String
    let hardLimitInDefinition: Bool
    let logger: Logger
    /// Resource pools' cgroup partitions on this host.
    public let pools = PoolPartitions()
    /// Storage vMotions of this host's running VMs.
    public let diskMoves = DiskMoves()
    /// Why each storage pool the controller asked for last could not be realized here.
    let storageErrors = Mutex<[String: String]>([:])
    /// The networks last given (with peers resolved) and why any of them is unusable.
    let networkState = Mutex<(want: [NetworkSetting], errors: [String: String])>(([], [:]))
    /// One network change at a time.
    let networkApplies = Serial()
    /// Prometheus metrics.
    public let metrics = AgentMetrics()
    /// Guest CPUs the core parker parked (empty until its first pass).
    let parkedCPUs = Mutex<[Int]>([])
    /// Disk images this agent made for incoming migrations: the only ones `releaseDisks` removes.
    let preparedDisks: PathRecord

    public init(config: AgentConfig, hub: EventHub, logger: Logger) {
        self.config = config
        self.hub = hub
        self.logger = logger
        self.supervisor = LibvirtSupervisor(uri: config.libvirtURI, hub: hub, logger: logger)
        self.preparedDisks = PathRecord(file: config.dataDir + "/prepared-disks.txt")
        let migrations = self.migrations
        supervisor.setOnConnected { conn in await migrations.abortOrphans(conn, hub: hub, logger: logger) }
        self.accelerator = HostFacts.accelerator(setting: config.accelerator)
        try? FileManager.default.createDirectory(atPath: config.consoleLogDir, withIntermediateDirectories: true)
        switch config.hardLimitMode {
        case "definition": hardLimitInDefinition = true
        case "live": hardLimitInDefinition = false
        default: hardLimitInDefinition = HostFacts.hasSysResource()
        }
    }

    /// Runs `body` with the live connection off the cooperative pool, mapping errors.
    func withLibvirt<T: Sendable>(_ body: @escaping @Sendable (Connection) throws -> T) async throws(AgentError) -> T {
        let conn = try supervisor.connection()
        do {
            return try await conn.run(body)
        } catch let e as AgentError {
            throw e
        } catch let e as LibvirtError {
            if e.isConnectionLost { supervisor.reportLost(conn, reason: e.message) }
            throw AgentError.libvirt(e)
        } catch {
            throw AgentError.internalError("\(error)")
        }
    }

    // MARK: Inventory

    /// The CPUs guests run on: the configured list, else every CPU the machine has online.
    public func guestCPUList() -> [Int] {
        if let g = config.guestCPUs.flatMap(CPUList.parse) { return g }
        return Array(0..<ProcessInfo.processInfo.processorCount)
    }

    func setParked(_ cpus: [Int]) { parkedCPUs.withLock { $0 = cpus } }

    public func inventory() async throws(AgentError) -> HostInventory {
        let accelerator = self.accelerator
        let configuredName = config.hostName
        let reserve = config.hostReservedMemoryMiB
        let guestCPUs = config.guestCPUs.flatMap(CPUList.parse)
        let parked = config.coreParking ? parkedCPUs.withLock { $0 } : nil
        return try await withLibvirt { c in
            let node = try c.nodeInfo()
            let cells = (try? CapabilitiesXML.numaCells(try c.capabilitiesXML())) ?? []
            let free = try c.freeMemory()
            let usage = try Self.usage(c)
            let totalMiB = Int(node.memoryKiB / 1024)
            let totalMHz = (guestCPUs.map { $0.filter { $0 < node.cpus }.count } ?? node.cpus) * node.mhz
            return HostInventory(
                hostname: configuredName.isEmpty ? try c.hostname() : configuredName,
                agentVersion: Self.version, libvirtVersion: try c.libvirtVersion(),
                qemuVersion: try c.hypervisorVersion(), accelerator: accelerator,
                cpu: .init(model: node.model, cpus: node.cpus, mhz: node.mhz, sockets: node.sockets, cores: node.cores, threads: node.threads),
                numa: cells.map { .init(id: $0.id, memoryMiB: $0.memoryKiB / 1024, cpus: $0.cpus) },
                memory: .init(totalMiB: totalMiB, freeMiB: Int(free / 1024 / 1024)),
                capacity: .init(
                    vms: usage.vms, runningVMs: usage.running, allocatedVCPUs: usage.vcpus,
                    allocatedMemoryMiB: usage.memoryMiB, reservedMemoryMiB: usage.reservedMemoryMiB,
                    reservedCPUMHz: usage.reservedMHz, freeMemoryMiB: Int(free / 1024 / 1024),
                    unreservedMemoryMiB: max(0, totalMiB - reserve - usage.reservedMemoryMiB),
                    unreservedCPUMHz: max(0, totalMHz - usage.reservedMHz)),
                connected: true,
                cpuModels: (try? CapabilitiesXML.usableCPUModels(
                    domainCapabilities: c.domainCapabilitiesXML(virtType: accelerator == "kvm" ? "kvm" : "qemu"))) ?? [],
                hostCPUModel: try? CapabilitiesXML.hostCPUModel(c.capabilitiesXML()),
                networks: Self.bridges() + ((try? c.networks().map(\.name)) ?? []),
                guestCPUs: guestCPUs.map { $0.filter { $0 < node.cpus } }, parkedCPUs: parked)
        }
    }

    /// Linux bridges of this host (guests' NICs plug into them).
    static func bridges() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/net")) ?? []
        return names.filter { FileManager.default.fileExists(atPath: "/sys/class/net/\($0)/bridge") }.sorted()
    }

    struct Usage {
        var vms = 0, running = 0, vcpus = 0, memoryMiB = 0, reservedMemoryMiB = 0, reservedMHz = 0
    }

    /// What the running domains take; reservations come from the specs they were defined from.
    static func usage(_ c: Connection, excluding: String? = nil) throws -> Usage {
        var u = Usage()
        for d in try c.domains() where d.name != excluding {
            // A domain may vanish between the listing and this call: it then takes nothing.
            guard let info = try Self.ifStillThere({ try d.info() }) else { continue }
            u.vms += 1
            guard info.state.isActive else { continue }
            u.running += 1
            u.vcpus += info.vcpus
            u.memoryMiB += Int(info.maxMemoryKiB / 1024)
            if let spec = try? DomainXML.parse(d.xml(inactive: true)).spec {
                u.reservedMemoryMiB += spec.resources?.memory?.reservationMiB ?? 0
                u.reservedMHz += spec.resources?.cpu?.reservationMHz ?? 0
            }
        }
        return u
    }

    // MARK: VMs

    public func list() async throws(AgentError) -> [VMStatus] {
        try await withLibvirt { c in
            try c.domains().compactMap { d in try Self.ifStillThere { try Self.status(d) } }.sorted { $0.name < $1.name }
        }
    }

    /// Runs a per-domain call; nil when the domain was undefined meanwhile (listings race with changes).
    static func ifStillThere<T>(_ body: () throws -> T) throws -> T? {
        do {
            return try body()
        } catch let e as LibvirtError where e.isNotFound {
            return nil
        }
    }

    public func status(_ name: String) async throws(AgentError) -> VMStatus {
        try await withLibvirt { c in try Self.status(try c.domain(named: name)) }
    }

    static func status(_ d: Domain) throws -> VMStatus {
        let info = try d.info()
        let def = try? DomainXML.parse(d.xml(inactive: true))
        return VMStatus(
            name: d.name, uuid: d.uuid, state: info.state.rawValue, persistent: d.isPersistent(), vcpus: info.vcpus,
            memoryMiB: Int(info.maxMemoryKiB / 1024), spec: def?.spec, definedVCPUs: def?.vcpus, definedMemoryMiB: def.map { $0.memoryKiB / 1024 })
    }

    func domainOptions(hostCoreMHz: Int, name: String) -> DomainOptions {
        DomainOptions(
            type: accelerator == "kvm" ? .kvm : .qemu, hostCoreMHz: hostCoreMHz,
            hardLimitInDefinition: hardLimitInDefinition, consoleLogPath: consoleLogPath(name),
            cpuset: config.guestCPUs.flatMap(CPUList.parse).map(CPUList.format))
    }

    func consoleLogPath(_ name: String) -> String { "\(config.consoleLogDir)/\(name).console.log" }

    /// Defines a VM from its spec, or updates the definition of an existing one (applies at next boot).
    /// Returns whether it was created.
    public func define(_ spec: VMSpec) async throws(AgentError) -> (VMStatus, created: Bool) {
        var spec = spec
        if spec.cpuModel == nil { spec.cpuModel = config.cpuModel }
        let problems = spec.validate()
        if !problems.isEmpty { throw AgentError.invalid(problems) }
        if spec.disks.contains(where: { $0.path == nil && $0.rbd == nil }) {
            throw AgentError.invalid(spec.disks.indices.filter { spec.disks[$0].path == nil && spec.disks[$0].rbd == nil }.map {
                ValidationProblem("disks[\($0)].path", "is required by the agent (the controller resolves pools into paths)")
            })
        }
        // Disks only from pools (or the directories the host's operator allows): never a host file or
        // a block device a manifest names.
        var confined: [ValidationProblem] = []
        for (i, d) in spec.disks.enumerated() {
            if let path = d.path, let problem = try await diskPathProblem(path) { confined.append(.init("disks[\(i)].path", problem)) }
        }
        if !confined.isEmpty { throw AgentError.invalid(confined) }
        // The pool's partition must exist before the domain starts (or arrives by migration).
        if let path = spec.resourcePoolPath { try pools.ensure(path) }
        let fixed = spec
        let options = { @Sendable (mhz: Int) in self.domainOptions(hostCoreMHz: mhz, name: fixed.name) }
        return try await withLibvirt { c in
            var existing: Domain?
            do { existing = try c.domain(named: fixed.name) } catch let e as LibvirtError where e.isNotFound { existing = nil }
            if let existing, let uuid = fixed.uuid, existing.uuid.lowercased() != uuid.lowercased() {
                throw AgentError.conflict("a VM named \(fixed.name) exists with another uuid (\(existing.uuid))")
            }
            var toDefine = fixed
            if toDefine.uuid == nil, let existing { toDefine.uuid = existing.uuid }
            let xml = DomainXML.build(toDefine, options: options(try c.nodeInfo().mhz))
            let d = try c.defineDomain(xml: xml)
            return (try Self.status(d), existing == nil)
        }
    }

    public func undefine(_ name: String, force: Bool) async throws(AgentError) {
        try await withLibvirt { c in
            let d = try c.domain(named: name)
            if try d.state().0.isActive {
                guard force else { throw AgentError.conflict("\(name) is running; stop it first or pass force=true") }
                try d.destroy()
            }
            try d.undefine()
        }
    }

    /// Starts a VM after admission control: its memory and CPU reservations must fit what the host has
    /// not reserved yet. Applies the memory hard limit live where the definition cannot carry it.
    public func start(_ name: String) async throws(AgentError) -> ActionResult {
        let reserve = config.hostReservedMemoryMiB
        let live = !hardLimitInDefinition
        return try await withLibvirt { c in
            let d = try c.domain(named: name)
            let def = try DomainXML.parse(d.xml(inactive: true))
            if try d.state().0.isActive { throw AgentError.conflict("\(name) is already running") }
            let node = try c.nodeInfo()
            if let path = def.spec?.resourcePoolPath, let spec = def.spec {
                try self.pools.ensure(path)
                self.pools.admit(
                    path: path, footprintBytes: Int64(PoolDivvy.footprintMiB(spec)) << 20,
                    cpuQuotaMicros: HostTuning.from(spec, hostCoreMHz: node.mhz).cpuQuotaMicros)
            }
            let usage = try Self.usage(c, excluding: name)
            let wantMem = def.spec?.resources?.memory?.reservationMiB ?? 0
            let wantMHz = def.spec?.resources?.cpu?.reservationMHz ?? 0
            let freeMem = Int(node.memoryKiB / 1024) - reserve - usage.reservedMemoryMiB
            let freeMHz = node.cpus * node.mhz - usage.reservedMHz
            if wantMem > freeMem {
                throw AgentError.conflict("cannot reserve \(wantMem) MiB for \(name): \(max(0, freeMem)) MiB unreserved on this host")
            }
            if wantMHz > freeMHz {
                throw AgentError.conflict("cannot reserve \(wantMHz) MHz for \(name): \(max(0, freeMHz)) MHz unreserved on this host")
            }
            try d.start()
            if live, let spec = def.spec {
                let tuning = HostTuning.from(spec, hostCoreMHz: node.mhz)
                if let hard = tuning.memoryHardLimitKiB {
                    do {
                        try d.setMemoryParameters(hardLimitKiB: UInt64(hard), live: true, config: false)
                    } catch {
                        try? d.destroy()
                        throw error
                    }
                }
            }
            return ActionResult(name: name, action: "start", state: try d.state().0.rawValue, how: nil)
        }
    }

    /// ACPI shutdown; powers the VM off once `timeout` has passed.
    public func shutdown(_ name: String, timeout: Duration) async throws(AgentError) -> ActionResult {
        try await withLibvirt { c in
            let d = try c.domain(named: name)
            guard try d.state().0.isActive else { throw AgentError.conflict("\(name) is not running") }
            try d.shutdown()
        }
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let state = try await withLibvirt { c in try c.domain(named: name).state().0 }
            if !state.isActive { return ActionResult(name: name, action: "shutdown", state: state.rawValue, how: "acpi") }
            try? await Task.sleep(for: .milliseconds(200))
        }
        let state = try await withLibvirt { c -> DomainState in
            let d = try c.domain(named: name)
            if try d.state().0.isActive {
                do { try d.destroy() } catch let e as LibvirtError where e.code == .operationInvalid {}
            }
            return try d.state().0
        }
        logger.info("shutdown timed out; powered off", metadata: ["vm": "\(name)"])
        return ActionResult(name: name, action: "shutdown", state: state.rawValue, how: "forced")
    }

    public func simple(_ name: String, action: String) async throws(AgentError) -> ActionResult {
        try await withLibvirt { c in
            let d = try c.domain(named: name)
            let state = try d.state().0
            switch action {
            case "destroy": try d.destroy()
            case "reboot": try d.reboot()
            case "suspend":
                guard state == .running || state == .blocked else { throw AgentError.conflict("\(name) is \(state.rawValue); only a running VM suspends") }
                try d.suspend()
            case "resume":
                guard state == .paused else { throw AgentError.conflict("\(name) is \(state.rawValue), not paused") }
                try d.resume()
            default: throw AgentError.notFound("no action \(action)")
            }
            return ActionResult(name: name, action: action, state: try d.state().0.rawValue, how: nil)
        }
    }

    public func stats(_ name: String?) async throws(AgentError) -> [VMStats] {
        try await withLibvirt { c in
            if let name { _ = try c.domain(named: name) }
            let all = try c.allDomainStats()
            return all.filter { name == nil || $0.key == name }.map { (n, raw) in
                VMStats(
                    name: n, state: raw["state.state"].flatMap { $0.intValue }.map { Self.stateName(Int32($0)) } ?? "unknown",
                    cpuTimeNs: raw["cpu.time"]?.intValue ?? 0, vcpus: Int(raw["vcpu.current"]?.intValue ?? 0),
                    memoryKiB: raw["balloon.current"]?.intValue ?? 0, raw: raw.mapValues(Self.scalar))
            }.sorted { $0.name < $1.name }
        }
    }

    static func stateName(_ raw: Int32) -> String {
        ["nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended"][safe: Int(raw)] ?? "nostate"
    }

    static func scalar(_ v: TypedValue) -> Scalar {
        switch v {
        case .int(let i): return .int(i)
        case .uint(let u): return u > UInt64(Int64.max) ? .double(Double(u)) : .int(Int64(u))
        case .double(let d): return .double(d)
        case .bool(let b): return .bool(b)
        case .string(let s): return .string(s)
        }
    }

    /// Applies the controller's per-host resource pool settings to their cgroup partitions.
    /// A pool's CPU and memory figures on one host: 100 million MHz, 1 PiB.
    static let maxPoolMHz = 100_000_000
    static let maxPoolMiB = 1 << 30

    public func applyPools(_ request: PoolSettingsRequest) async throws(AgentError) -> [PoolPartition] {
        var problems: [ValidationProblem] = []
        var names = Set<String>()
        for (i, p) in request.pools.enumerated() {
            let at = "pools[\(i)]"
            if !Names.isValid(p.name) { problems.append(.init("\(at).name", "must match ^[a-z][a-z0-9-]{0,62}$")) }
            if !names.insert(p.name).inserted { problems.append(.init("\(at).name", "\(p.name) is listed twice")) }
            if p.path.isEmpty || p.path.count > 16 || p.path.last != p.name || !p.path.allSatisfy(Names.isValid) {
                problems.append(.init("\(at).path", "must list valid pool names from the root to \(p.name) (at most 16)"))
            } else if p.parent != (p.path.count > 1 ? p.path[p.path.count - 2] : nil) {
                problems.append(.init("\(at).parent", "must be the pool before \(p.name) in path"))
            }
            if p.cpuShares < 2 || p.cpuShares > 262_144 { problems.append(.init("\(at).cpuShares", "must be between 2 and 262144")) }
            // Upper bounds keep the kernel values in range: MHz → a CFS quota in µs, MiB → bytes.
            if let l = p.cpuLimitMHz, !(1...Self.maxPoolMHz).contains(l) { problems.append(.init("\(at).cpuLimitMHz", "must be between 1 and \(Self.maxPoolMHz)")) }
            if let l = p.memoryLimitMiB, !(1...Self.maxPoolMiB).contains(l) { problems.append(.init("\(at).memoryLimitMiB", "must be between 1 and \(Self.maxPoolMiB)")) }
            if !(0...Self.maxPoolMHz).contains(p.cpuReservationMHz) { problems.append(.init("\(at).cpuReservationMHz", "must be between 0 and \(Self.maxPoolMHz)")) }
            if !(0...Self.maxPoolMiB).contains(p.memoryReservationMiB) { problems.append(.init("\(at).memoryReservationMiB", "must be between 0 and \(Self.maxPoolMiB)")) }
            if !(0...1_000_000).contains(p.vms) { problems.append(.init("\(at).vms", "must be between 0 and 1000000")) }
        }
        if problems.isEmpty {
            let known = Set(request.pools.map(\.name))
            for (i, p) in request.pools.enumerated() where p.path.dropLast().contains(where: { !known.contains($0) }) {
                problems.append(.init("pools[\(i)].path", "names a pool that is not in the request"))
            }
        }
        if !problems.isEmpty { throw AgentError.invalid(problems) }
        let mhz = try await withLibvirt { c in try c.nodeInfo().mhz }
        return try pools.apply(request.pools, coreMHz: mhz)
    }

    /// Live cputune/memtune from libvirt and the cgroups the kernel enforces them in.
    public func tuning(_ name: String) async throws(AgentError) -> VMTuning {
        try await withLibvirt { c in
            let d = try c.domain(named: name)
            guard try d.state().0.isActive else { throw AgentError.conflict("\(name) is not running") }
            let sched = try d.schedulerParameters().mapValues(Self.scalar)
            let mem = try d.memoryParameters().mapValues(Self.scalar)
            return VMTuning(name: name, scheduler: sched, memory: mem, cgroups: Self.cgroups(ofDomain: name))
        }
    }

    /// cgroup v1 paths of the domain's QEMU process (from libvirt's pid file, in this host's /run).
    static func cgroups(ofDomain name: String) -> [String: String] {
        guard let pid = TextFile.read("/run/libvirt/qemu/\(name).pid")?.trimmed,
            let text = TextFile.read("/proc/\(pid)/cgroup")
        else { return [:] }
        var out: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            // libvirt moves QEMU's own threads into an `emulator` child; the domain's limits sit one level up.
            var path = String(parts[2])
            if path.hasSuffix("/emulator") { path.removeLast("/emulator".count) }
            for controller in parts[1].split(separator: ",") { out[String(controller)] = path }
            if parts[1].isEmpty { out["unified"] = String(parts[2]) }
        }
        return out
    }

    /// The tail of the VM's serial console log.
    public func console(_ name: String, maxBytes: Int = 65536) async throws(AgentError) -> String {
        _ = try await withLibvirt { c in try c.domain(named: name).name }
        let fd = open(consoleLogPath(name), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        let size = lseek(fd, 0, SEEK_END)
        guard size > 0, lseek(fd, max(0, size - off_t(maxBytes)), SEEK_SET) >= 0 else { return "" }
        var bytes = [UInt8](repeating: 0, count: Int(min(size, off_t(maxBytes))))
        var filled = 0
        while filled < bytes.count {
            let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + filled, $0.count - filled) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            filled += n
        }
        return String(decoding: bytes[..<filled], as: UTF8.self)
    }
}

extension Array {
    subscript(safe i: Int) -> Element? { indices.contains(i) ? self[i] : nil }
}

/// A set of paths kept in a file (one per line, replaced atomically at each change), so that what the
/// agent made survives its restart.
final class PathRecord: Sendable {
    let file: String
    private let paths: Mutex<Set<String>>

    init(file: String) {
        self.file = file
        let text = TextFile.read(file) ?? ""
        paths = Mutex(Set(text.split(separator: "\n").map(String.init).filter { $0.hasPrefix("/") }))
    }

    func contains(_ path: String) -> Bool { paths.withLock { $0.contains(path) } }
    func add(_ path: String) { change { $0.insert(path) } }
    func remove(_ path: String) { change { $0.remove(path) } }

    private func change(_ body: (inout Set<String>) -> Void) {
        paths.withLock { set in
            let before = set
            body(&set)
            guard set != before else { return }
            if let slash = file.lastIndex(of: "/"), slash != file.startIndex {
                try? FileManager.default.createDirectory(atPath: String(file[..<slash]), withIntermediateDirectories: true)
            }
            try? TextFile.replace(file, set.sorted().map { $0 + "\n" }.joined(), mode: 0o600)
        }
    }
}
