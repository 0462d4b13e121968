import AgentAPI
import ClusterModel
import FoundationEssentials
import Synchronization
import Spawn
import SystemFiles

#if canImport(Glibc)
import Glibc
#endif

/// Resource pools on this host: one cgroup partition per pool, nested like the pools under libvirt's
/// `/machine`, in every cgroup hierarchy libvirt places domains in (cgroupfs, as libvirt uses it without
/// systemd), carrying the controller's per-host share of each pool's shares, limit and reservation.
/// Domains join their pool's partition through `<resource><partition>`.
///
/// The layouts (docs/operations.md, cgroups): cgroup v1 (one hierarchy per controller), pure v2 (one
/// unified hierarchy carrying the controllers) and hybrid (v1 controllers plus a unified mount without
/// controllers, as systemd's default before v2 was: libvirt creates a domain's group in both, and a
/// partition missing from the unified one fails every start with "Unable to read from
/// '/sys/fs/cgroup/unified/machine/cgroup.controllers'"). Partitions are made in all of them; limits are
/// written where a hierarchy carries the controller.
public final class PoolPartitions: Sendable {
    struct Hierarchy: Sendable, Equatable {
        var mount: String
        var controllers: Set<String>
        var v2: Bool
    }

    /// The controllers libvirt creates a domain's cgroup in (cgroup v1).
    static let libvirtControllers: Set<String> = ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "net_cls", "perf_event", "name=systemd"]

    private let desired = Mutex<[HostPoolSetting]>([])
    private let problems = Mutex<[String: [String]]>([:])
    private let mountinfo: @Sendable () -> String?
    private let systemd: @Sendable () -> Bool
    /// Runs `systemctl` with these arguments; returns its output or throws its error.
    let systemctl: @Sendable ([String]) throws -> String
    /// Where `systemctl set-property --runtime` keeps its drop-ins: a slice with one is the agent's.
    let runtimeControlDir: String
    /// The properties each slice was last given (systemd hosts).
    let slicesApplied = Mutex<[String: [String]]>([:])

    /// The host's own cgroups; tests give a recorded mountinfo whose mounts are scratch directories,
    /// and a stand-in for systemctl.
    public init(
        mountinfo: @escaping @Sendable () -> String? = { TextFile.read("/proc/self/mountinfo") },
        systemd: @escaping @Sendable () -> Bool = { FileManager.default.fileExists(atPath: "/run/systemd/system") },
        systemctl: @escaping @Sendable ([String]) throws -> String = { try Spawn.run("systemctl", $0, timeoutSeconds: 30) },
        runtimeControlDir: String = "/run/systemd/system.control"
    ) {
        self.mountinfo = mountinfo
        self.systemd = systemd
        self.systemctl = systemctl
        self.runtimeControlDir = runtimeControlDir
    }

    /// Whether systemd runs this host (libvirt then places domains in machined's slices).
    var systemdManaged: Bool { systemd() }

    func hierarchies() -> [Hierarchy] {
        Self.hierarchies(mountinfo: mountinfo() ?? "") { TextFile.read($0) }
    }

    /// cgroup hierarchies from the text of /proc/self/mountinfo: the v1 ones libvirt uses, and every
    /// unified (v2) one, whose controllers come from its root's cgroup.controllers (none on a hybrid host).
    static func hierarchies(mountinfo text: String, read: (String) -> String?) -> [Hierarchy] {
        var v1: [Hierarchy] = []
        var v2: [Hierarchy] = []
        for line in text.split(separator: "\n") {
            let halves = line.components(separatedBy: " - ")
            guard halves.count == 2 else { continue }
            let left = halves[0].split(separator: " ")
            let right = halves[1].split(separator: " ")
            guard left.count >= 5, right.count >= 3 else { continue }
            let mount = unescape(String(left[4]))
            switch right[0] {
            case "cgroup":
                let opts = Set(right[2].split(separator: ",").map(String.init))
                let controllers = opts.intersection(libvirtControllers)
                if !controllers.isEmpty { v1.append(.init(mount: mount, controllers: controllers, v2: false)) }
            case "cgroup2":
                let list = read("\(mount)/cgroup.controllers") ?? ""
                let controllers = Set(list.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
                if !v2.contains(where: { $0.mount == mount }) { v2.append(.init(mount: mount, controllers: controllers, v2: true)) }
            default: continue
            }
        }
        // A v1 controller is never also in the unified hierarchy; with v1 present, the unified mount only
        // carries the groups' structure (hybrid). Only the first unified mount counts (libvirt's).
        return v1 + v2.prefix(1)
    }

    /// mountinfo escapes space, tab, newline and backslash in paths as octal (`\040`).
    static func unescape(_ s: String) -> String { decodeEscapes(s, lead: "\\", width: 3, radix: 8) }

    /// Decodes each `lead` followed by `width` digits in `radix` into that byte (mountinfo's `\040`,
    /// systemd's `\x2d`); anything else is kept as it is.
    static func decodeEscapes(_ s: String, lead: String, width: Int, radix: Int) -> String {
        let b = Array(s.utf8), l = Array(lead.utf8)
        var out: [UInt8] = []
        var i = 0
        while i < b.count {
            if i + l.count + width <= b.count, Array(b[i..<(i + l.count)]) == l,
               let v = UInt8(String(decoding: b[(i + l.count)..<(i + l.count + width)], as: UTF8.self), radix: radix) {
                out.append(v)
                i += l.count + width
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The partition's directory below a hierarchy's root: `machine/gold.partition/silver.partition`.
    public static func directory(_ path: [String]) -> String {
        (["machine"] + path.map(PoolDivvy.cgroupDirectory)).joined(separator: "/")
    }

    /// Makes the partition's directories (and `machine`) where they are missing, in every hierarchy.
    /// A new cpuset directory gets its parent's CPUs and memory nodes (the kernel leaves them empty).
    func ensure(_ path: [String]) throws(AgentError) {
        if systemdManaged {
            // The slice started (with its parents), so its cgroup exists before the domain's scope.
            let slice = PoolSlices.name(path)
            do { _ = try systemctl(["start", slice]) } catch {
                throw AgentError.internalError("cannot start \(slice): \(error)")
            }
            return
        }
        for h in hierarchies() {
            var dir = h.mount
            for component in Self.directory(path).split(separator: "/") {
                let parent = dir
                dir += "/" + component
                if FileManager.default.fileExists(atPath: dir) { continue }
                if h.v2 && h.controllers.isSuperset(of: ["cpu", "memory"]) {
                    // A v2 group's limits exist only where its parent hands it the controllers.
                    let enabled = Self.read("\(parent)/cgroup.subtree_control") ?? ""
                    if !enabled.contains("cpu") || !enabled.contains("memory") { _ = Self.write("\(parent)/cgroup.subtree_control", "+cpu +memory") }
                }
                if mkdir(dir, 0o755) != 0 && errno != EEXIST {
                    throw AgentError.internalError("cannot create cgroup \(dir): \(String(cString: strerror(errno)))")
                }
                if h.controllers.contains("cpuset") {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let value = Self.read("\(parent)/\(f)") ?? ""
                        if !value.isEmpty, (Self.read("\(dir)/\(f)") ?? "").isEmpty { _ = Self.write("\(dir)/\(f)", value) }
                    }
                }
            }
        }
    }

    /// Applies every pool's settings for this host: partitions made, CPU quotas lowered deepest first
    /// and raised shallowest first (cgroup v1 refuses a child quota above its parent's), memory limits
    /// and reservations written, partitions of pools that no longer exist removed once empty.
    /// Returns the partitions read back.
    public func apply(_ pools: [HostPoolSetting], coreMHz: Int) throws(AgentError) -> [PoolPartition] {
        var problems: [String: [String]] = [:]
        // Parents before children, whatever order they came in.
        let ordered = pools.sorted { $0.path.count != $1.path.count ? $0.path.count < $1.path.count : $0.name < $1.name }
        if systemdManaged {
            // libvirt asks systemd-machined for slices there (/machine/gold → machine-gold.slice): the
            // pools are tuned through systemd, which owns those cgroups (PoolSlices.swift).
            let problems = applySlices(ordered, coreMHz: coreMHz)
            desired.withLock { $0 = ordered }
            self.problems.withLock { $0 = problems }
            return read()
        }
        for p in ordered { try ensure(p.path) }
        let hierarchies = self.hierarchies()
        if let cpu = hierarchies.first(where: { $0.controllers.contains("cpu") && !$0.v2 }) {
            func quota(_ dir: String) -> Int? {
                Self.read("\(cpu.mount)/\(dir)/cpu.cfs_quota_us").flatMap(Int.init).flatMap { $0 < 0 ? nil : $0 }
            }
            let wanted: [(HostPoolSetting, String, String)] = ordered.map { p in
                let v = PoolCgroupValues.v1(p, coreMHz: coreMHz)["cpu"]!
                return (p, Self.directory(p.path), v.first { $0.0 == "cpu.cfs_quota_us" }!.1)
            }
            func isLower(_ new: String, than old: Int?) -> Bool {
                guard let n = Int(new), n >= 0 else { return false }
                return old.map { n < $0 } ?? true
            }
            // Period first where someone changed it (with the quota lifted, which is always allowed).
            for (_, dir, _) in wanted where Self.read("\(cpu.mount)/\(dir)/cpu.cfs_period_us") != String(PoolCgroupValues.periodMicros) {
                _ = Self.write("\(cpu.mount)/\(dir)/cpu.cfs_quota_us", "-1")
                _ = Self.write("\(cpu.mount)/\(dir)/cpu.cfs_period_us", String(PoolCgroupValues.periodMicros))
            }
            for (p, dir, q) in wanted.reversed() where isLower(q, than: quota(dir)) {
                if let e = Self.write("\(cpu.mount)/\(dir)/cpu.cfs_quota_us", q) { problems[p.name, default: []].append("cpu.cfs_quota_us \(q): \(e)") }
            }
            for (p, dir, q) in wanted where !isLower(q, than: quota(dir)) && Int(q).flatMap({ $0 < 0 ? nil : $0 }) != quota(dir) {
                if let e = Self.write("\(cpu.mount)/\(dir)/cpu.cfs_quota_us", q) { problems[p.name, default: []].append("cpu.cfs_quota_us \(q): \(e)") }
            }
            for (p, dir, _) in wanted {
                let s = String(p.cpuShares)
                if Self.read("\(cpu.mount)/\(dir)/cpu.shares") != s, let e = Self.write("\(cpu.mount)/\(dir)/cpu.shares", s) {
                    problems[p.name, default: []].append("cpu.shares \(s): \(e)")
                }
            }
        }
        if let mem = hierarchies.first(where: { $0.controllers.contains("memory") && !$0.v2 }) {
            for p in ordered {
                let dir = "\(mem.mount)/\(Self.directory(p.path))"
                for (file, value) in PoolCgroupValues.v1(p, coreMHz: coreMHz)["memory"]! {
                    let current = Self.read("\(dir)/\(file)").flatMap(Int64.init)
                    let target = Int64(value) ?? -1
                    // The kernel reads -1 as "unlimited" and shows its largest page-aligned number.
                    if current == target || (target < 0 && (current ?? 0) >= Int64.max / 2) { continue }
                    if let e = Self.write("\(dir)/\(file)", value) {
                        let used = Self.read("\(dir)/memory.usage_in_bytes") ?? "?"
                        problems[p.name, default: []].append("\(file) \(value): \(e) (the pool's guests use \(used) bytes here)")
                    }
                }
            }
        }
        if let unified = hierarchies.first(where: { $0.v2 && $0.controllers.contains("cpu") }) {
            for p in ordered {
                let dir = "\(unified.mount)/\(Self.directory(p.path))"
                for (file, value) in PoolCgroupValues.v2(p, coreMHz: coreMHz) where Self.read("\(dir)/\(file)") != value {
                    if let e = Self.write("\(dir)/\(file)", value) { problems[p.name, default: []].append("\(file) \(value): \(e)") }
                }
            }
        }
        // Partitions of pools that are gone: removed deepest first once no domain is left in them.
        let keep = Set(ordered.map { Self.directory($0.path) })
        for h in hierarchies {
            for dir in Self.partitionDirectories(under: h.mount).reversed() where !keep.contains(dir) {
                rmdir("\(h.mount)/\(dir)")
            }
        }
        desired.withLock { $0 = ordered }
        self.problems.withLock { $0 = problems }
        return read()
    }

    /// Makes room in a VM's pool partitions before it starts here: the controller's division counted only
    /// the VMs that ran when it was made, so a memory limit could hold the newcomer below its footprint
    /// (the kernel would kill a guest) and a CFS quota could be below the VM's own (libvirt's write of it
    /// would fail). Memory limits are raised to what the partition uses plus the footprint, CPU quotas to
    /// the VM's, parents first; the controller's next division settles them.
    func admit(path: [String], footprintBytes: Int64, cpuQuotaMicros: Int?) {
        if systemdManaged { return admitInSlices(path: path, footprintBytes: footprintBytes, cpuQuotaMicros: cpuQuotaMicros) }
        let hierarchies = self.hierarchies()
        let chain = (1...path.count).map { Self.directory(Array(path.prefix($0))) }
        if let cpu = hierarchies.first(where: { $0.controllers.contains("cpu") && !$0.v2 }), let want = cpuQuotaMicros {
            for dir in chain {
                let q = Self.read("\(cpu.mount)/\(dir)/cpu.cfs_quota_us").flatMap(Int.init) ?? -1
                if q >= 0 && q < want { _ = Self.write("\(cpu.mount)/\(dir)/cpu.cfs_quota_us", String(want)) }
            }
        }
        if let mem = hierarchies.first(where: { $0.controllers.contains("memory") && !$0.v2 }) {
            for dir in chain {
                let base = "\(mem.mount)/\(dir)"
                guard let limit = Self.read("\(base)/memory.limit_in_bytes").flatMap(Int64.init), limit < Int64.max / 2 else { continue }
                let used = Self.read("\(base)/memory.usage_in_bytes").flatMap(Int64.init) ?? 0
                if limit < used + footprintBytes { _ = Self.write("\(base)/memory.limit_in_bytes", String(used + footprintBytes)) }
            }
        }
    }

    /// Every partition directory (`….partition`) below `machine`, parents before children.
    static func partitionDirectories(under mount: String) -> [String] {
        var out: [String] = []
        var queue = ["machine"]
        while !queue.isEmpty {
            let dir = queue.removeFirst()
            let names = (try? FileManager.default.contentsOfDirectory(atPath: "\(mount)/\(dir)")) ?? []
            for n in names.sorted() where n.hasSuffix(".partition") {
                var isDir = false
                if FileManager.default.fileExists(atPath: "\(mount)/\(dir)/\(n)", isDirectory: &isDir), isDir {
                    out.append("\(dir)/\(n)")
                    queue.append("\(dir)/\(n)")
                }
            }
        }
        return out
    }

    /// The partitions as the kernel has them: the desired pools, and leftovers of removed pools that
    /// still hold domains.
    public func read() -> [PoolPartition] {
        let pools = desired.withLock { $0 }
        let problems = self.problems.withLock { $0 }
        let hierarchies = self.hierarchies()
        let cpu = hierarchies.first { $0.controllers.contains("cpu") }
        let mem = hierarchies.first { $0.controllers.contains("memory") }
        var out: [PoolPartition] = []
        var listed = Set<String>()
        let slices = systemdManaged
        func entry(name: String, dir: String, setting: HostPoolSetting?, partition: String) -> PoolPartition {
            var shares: Int?, period: Int?, quota: Int?, limit: Int64?, reservation: Int64?
            if let cpu {
                if cpu.v2 {
                    // systemd maps CPUWeight to the kernel's weight as it is; the agent's own v2 partitions
                    // carry the kernel's mapping of shares.
                    let toShares = slices ? PoolSlices.shares(weight:) : PoolCgroupValues.shares(weight:)
                    shares = Self.read("\(cpu.mount)/\(dir)/cpu.weight").flatMap(Int.init).map(toShares)
                    let max = Self.read("\(cpu.mount)/\(dir)/cpu.max")?.split(separator: " ") ?? []
                    quota = max.first.flatMap { Int($0) }
                    period = max.count > 1 ? Int(max[1]) : nil
                } else {
                    shares = Self.read("\(cpu.mount)/\(dir)/cpu.shares").flatMap(Int.init)
                    period = Self.read("\(cpu.mount)/\(dir)/cpu.cfs_period_us").flatMap(Int.init)
                    quota = Self.read("\(cpu.mount)/\(dir)/cpu.cfs_quota_us").flatMap(Int.init).flatMap { $0 < 0 ? nil : $0 }
                }
            }
            if let mem {
                let (lf, rf) = mem.v2 ? ("memory.max", "memory.low") : ("memory.limit_in_bytes", "memory.soft_limit_in_bytes")
                limit = Self.read("\(mem.mount)/\(dir)/\(lf)").flatMap(Int64.init).flatMap { $0 >= Int64.max / 2 ? nil : $0 }
                reservation = Self.read("\(mem.mount)/\(dir)/\(rf)").flatMap(Int64.init).flatMap { $0 >= Int64.max / 2 ? nil : $0 }
            }
            let names = cpu.flatMap { try? FileManager.default.contentsOfDirectory(atPath: "\($0.mount)/\(dir)") } ?? []
            let domains = slices
                ? names.filter { $0.hasPrefix("machine-qemu") && $0.hasSuffix(".scope") }.map(PoolSlices.domainName(scope:)).sorted()
                : names.filter { $0.hasSuffix(".libvirt-qemu") }.map(Self.domainName).sorted()
            return PoolPartition(
                name: name, partition: partition, directory: dir, setting: setting, cpuShares: shares, cpuPeriodMicros: period,
                cpuQuotaMicros: quota, memoryLimitBytes: limit, memoryReservationBytes: reservation, domains: domains,
                errors: problems[name] ?? [])
        }
        for p in pools {
            let dir = slices ? PoolSlices.directory(p.path) : Self.directory(p.path)
            listed.insert(dir)
            out.append(entry(name: p.name, dir: dir, setting: p, partition: PoolDivvy.partition(p.path)))
        }
        if slices, let cpu {
            for (dir, path) in PoolSlices.sliceDirectories(under: cpu.mount) where !listed.contains(dir) && isOurs(PoolSlices.name(path)) {
                var e = entry(name: path.last ?? dir, dir: dir, setting: nil, partition: PoolDivvy.partition(path))
                e.errors.append("no longer a resource pool of the cluster; removed once its domains leave")
                out.append(e)
            }
        } else if let cpu {
            for dir in Self.partitionDirectories(under: cpu.mount) where !listed.contains(dir) {
                let comps = dir.split(separator: "/").dropFirst().map { c -> String in
                    var s = String(c.dropLast(".partition".count))
                    if s.hasPrefix("_") { s.removeFirst() }
                    return s
                }
                var e = entry(name: comps.last ?? dir, dir: dir, setting: nil, partition: PoolDivvy.partition(comps))
                e.errors.append("no longer a resource pool of the cluster; removed once its domains leave")
                out.append(e)
            }
        }
        return out
    }

    /// `qemu-3-web1.libvirt-qemu` → `web1`.
    static func domainName(_ dir: String) -> String {
        var s = dir.hasSuffix(".libvirt-qemu") ? String(dir.dropLast(".libvirt-qemu".count)) : dir
        if s.hasPrefix("qemu-"), let dash = s.dropFirst(5).firstIndex(of: "-") { s = String(s[s.index(after: dash)...]) }
        return s
    }

    static func read(_ path: String) -> String? {
        TextFile.read(path)?.trimmed
    }

    /// Writes a cgroup file; returns the kernel's error, if any.
    static func write(_ path: String, _ value: String) -> String? {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return String(cString: strerror(errno)) }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        return n == bytes.count ? nil : String(cString: strerror(errno))
    }
}
