import AgentAPI
import ClusterModel
import FoundationEssentials

/// Resource pools on hosts that systemd runs. libvirt asks systemd-machined to start each domain's
/// scope in the slice its partition names (`/machine/gold/silver` → `machine-gold-silver.slice`, under
/// `machine.slice/machine-gold.slice/`), and systemd owns those cgroups: the agent tunes a pool's
/// slice through systemd (`systemctl set-property --runtime`: `CPUWeight`, `CPUQuota`, `MemoryMax`,
/// `MemoryLow`) and reads what the kernel then has from the slice's cgroup files, whatever the layout
/// (v2, or hybrid with the v1 controllers).
public enum PoolSlices {
    /// systemd's escaping of a slice name component (libvirt's virSystemdEscapeName): `-` separates
    /// the levels, so a `-` inside a pool's name becomes `\x2d`; pool names hold nothing else to escape.
    static func escape(_ component: String) -> String {
        var out = ""
        for c in component.unicodeScalars {
            if ("0"..."9").contains(c) || ("a"..."z").contains(c) || ("A"..."Z").contains(c) || c == "_" || c == ":" || (c == "." && !out.isEmpty) {
                out.unicodeScalars.append(c)
            } else {
                out += "\\x" + String(c.value, radix: 16).leftPadded(to: 2)
            }
        }
        return out
    }

    /// The slice of a pool path: `["gold", "silver"]` → `machine-gold-silver.slice`.
    public static func name(_ path: [String]) -> String {
        (["machine"] + path.map(escape)).joined(separator: "-") + ".slice"
    }

    /// The slice's cgroup directory below a hierarchy's root: each parent slice nests it.
    public static func directory(_ path: [String]) -> String {
        (["machine.slice"] + (1...max(1, path.count)).map { name(Array(path.prefix($0))) }).joined(separator: "/")
    }

    /// `machine-qemu\x2d3\x2dweb1.scope` → `web1`.
    static func domainName(scope: String) -> String {
        var s = scope.hasSuffix(".scope") ? String(scope.dropLast(".scope".count)) : scope
        if s.hasPrefix("machine-") { s.removeFirst("machine-".count) }
        return PoolPartitions.domainName(unescape(s))
    }

    static func unescape(_ s: String) -> String { PoolPartitions.decodeEscapes(s, lead: "\\x", width: 2, radix: 16) }

    /// Every pool slice below `machine.slice` (`machine-*.slice`, nested), parents first, with the pool
    /// path its name stands for.
    static func sliceDirectories(under mount: String) -> [(directory: String, path: [String])] {
        var out: [(String, [String])] = []
        var queue: [(String, [String])] = [("machine.slice", [])]
        while !queue.isEmpty {
            let (dir, path) = queue.removeFirst()
            let names = (try? FileManager.default.contentsOfDirectory(atPath: "\(mount)/\(dir)")) ?? []
            let prefix = (["machine"] + path.map(escape)).joined(separator: "-") + "-"
            for n in names.sorted() where n.hasPrefix(prefix) && n.hasSuffix(".slice") {
                let component = unescape(String(n.dropFirst(prefix.count).dropLast(".slice".count)))
                guard Names.isValid(component) else { continue }
                out.append(("\(dir)/\(n)", path + [component]))
                queue.append(("\(dir)/\(n)", path + [component]))
            }
        }
        return out
    }

    /// systemd's own mapping between cgroup v1 shares and CPUWeight (1024 shares = weight 100).
    public static func weight(shares: Int) -> Int { min(10_000, max(1, shares * 100 / 1024)) }
    public static func shares(weight: Int) -> Int { min(262_144, max(2, weight * 1024 / 100)) }

    /// The properties that carry a pool's per-host share, in systemctl's syntax. A reservation becomes
    /// MemoryLow, which only cgroup v2 enforces.
    public static func properties(_ s: HostPoolSetting, coreMHz: Int) -> [String] {
        let quota = s.cpuLimitMHz.map { PoolCgroupValues.quotaMicros(limitMHz: $0, coreMHz: coreMHz) }
        return [
            "CPUWeight=\(weight(shares: s.cpuShares))",
            // A percentage of one CPU: the quota per 100 ms period, in hundredths of a percent.
            "CPUQuota=" + (quota.map { percent(micros: $0) } ?? ""),
            "CPUQuotaPeriodSec=\(PoolCgroupValues.periodMicros / 1000)ms",
            "MemoryMax=" + (s.memoryLimitMiB.map { String(PoolCgroupValues.bytes(mib: $0)) } ?? "infinity"),
            "MemoryLow=\(PoolCgroupValues.bytes(mib: s.memoryReservationMiB))",
        ]
    }

    /// A CFS quota per `PoolCgroupValues.periodMicros` as systemd's CPUQuota percentage (two decimals).
    static func percent(micros: Int) -> String {
        let hundredths = (micros * 10_000 + PoolCgroupValues.periodMicros / 2) / PoolCgroupValues.periodMicros
        return "\(hundredths / 100).\(String(hundredths % 100).leftPadded(to: 2))%"
    }
}

extension String {
    func leftPadded(to width: Int) -> String { count >= width ? self : String(repeating: "0", count: width - count) + self }
}

extension PoolPartitions {
    /// Whether the agent set a slice's properties (its runtime drop-ins): only such slices are removed.
    func isOurs(_ slice: String) -> Bool {
        FileManager.default.fileExists(atPath: "\(runtimeControlDir)/\(slice).d")
    }

    /// Tunes every pool's slice (parents first) and starts it, so the kernel has it before a domain
    /// arrives; stops and forgets slices of pools that are gone once nothing runs in them. Returns the
    /// problems per pool.
    func applySlices(_ ordered: [HostPoolSetting], coreMHz: Int) -> [String: [String]] {
        var problems: [String: [String]] = [:]
        // The layout read once per pass (mountinfo and the unified root's controllers), not per pool.
        let hierarchies = self.hierarchies()
        let unified = hierarchies.contains { $0.v2 && $0.controllers.contains("memory") }
        let cpu = hierarchies.first { $0.controllers.contains("cpu") }
        let mem = hierarchies.first { $0.controllers.contains("memory") }
        let cpuMount = cpu?.mount
        for p in ordered {
            let slice = PoolSlices.name(p.path)
            let properties = PoolSlices.properties(p, coreMHz: coreMHz)
            // systemd is asked again only when the share changed or the slice is gone (the controller
            // sends the pools at every pass; a systemctl per pool and pass would keep systemd busy).
            let realized = cpuMount.map { FileManager.default.fileExists(atPath: "\($0)/\(PoolSlices.directory(p.path))") } ?? false
            if !(realized && slicesApplied.withLock({ $0[slice] == properties })) {
                do {
                    _ = try systemctl(["set-property", "--runtime", slice] + properties)
                    _ = try systemctl(["start", slice])
                    slicesApplied.withLock { $0[slice] = properties }
                } catch {
                    slicesApplied.withLock { $0[slice] = nil }
                    problems[p.name, default: []].append("systemctl \(slice): \(error)")
                }
            }
            // systemd records a MemoryMax the kernel refused (below what the guests use) as if it held:
            // the kernel's file says what does.
            if let limit = p.memoryLimitMiB, let mem {
                let dir = "\(mem.mount)/\(PoolSlices.directory(p.path))"
                let want = PoolCgroupValues.bytes(mib: limit)
                if let have = Self.read("\(dir)/\(mem.v2 ? "memory.max" : "memory.limit_in_bytes")").map({ Int64($0) ?? Int64.max }), have != want {
                    let used = Self.read("\(dir)/\(mem.v2 ? "memory.current" : "memory.usage_in_bytes")") ?? "?"
                    problems[p.name, default: []].append("MemoryMax \(want) not applied: the kernel keeps \(have) (the pool's guests use \(used) bytes here)")
                }
            }
            if !unified && p.memoryReservationMiB > 0 {
                problems[p.name, default: []].append(
                    "memory reservation not enforced here: MemoryLow needs cgroup v2 (this host's memory controller is v1); it counts in admission only")
            }
        }
        let keep = Set(ordered.map { PoolSlices.name($0.path) })
        if let cpu {
            for (dir, path) in PoolSlices.sliceDirectories(under: cpu.mount).reversed() {
                let slice = PoolSlices.name(path)
                guard !keep.contains(slice), isOurs(slice) else { continue }
                let inside = ((try? FileManager.default.contentsOfDirectory(atPath: "\(cpu.mount)/\(dir)")) ?? [])
                    .filter { $0.hasSuffix(".scope") || $0.hasSuffix(".slice") }
                guard inside.isEmpty else { continue }
                _ = try? systemctl(["stop", slice])
                _ = try? systemctl(["revert", slice])
                slicesApplied.withLock { $0[slice] = nil }
            }
        }
        return problems
    }

    /// Room for a VM about to start in a slice (see `admit`): MemoryMax raised to what the slice uses
    /// plus the footprint, CPUQuota to the VM's own, parents first; the next division settles them.
    func admitInSlices(path: [String], footprintBytes: Int64, cpuQuotaMicros: Int?) {
        let hierarchies = hierarchies()
        for depth in 1...path.count {
            let prefix = Array(path.prefix(depth))
            let slice = PoolSlices.name(prefix), dir = PoolSlices.directory(prefix)
            var props: [String] = []
            if let mem = hierarchies.first(where: { $0.controllers.contains("memory") }) {
                let (limitFile, usageFile) = mem.v2 ? ("memory.max", "memory.current") : ("memory.limit_in_bytes", "memory.usage_in_bytes")
                if let limit = Self.read("\(mem.mount)/\(dir)/\(limitFile)").flatMap(Int64.init), limit < Int64.max / 2 {
                    let used = Self.read("\(mem.mount)/\(dir)/\(usageFile)").flatMap(Int64.init) ?? 0
                    if limit < used + footprintBytes { props.append("MemoryMax=\(used + footprintBytes)") }
                }
            }
            if let want = cpuQuotaMicros, let cpu = hierarchies.first(where: { $0.controllers.contains("cpu") }) {
                let quota: Int? = cpu.v2
                    ? Self.read("\(cpu.mount)/\(dir)/cpu.max").flatMap { $0.split(separator: " ").first.flatMap { Int($0) } }
                    : Self.read("\(cpu.mount)/\(dir)/cpu.cfs_quota_us").flatMap(Int.init).flatMap { $0 < 0 ? nil : $0 }
                if let q = quota, q < want { props.append("CPUQuota=" + PoolSlices.percent(micros: want)) }
            }
            if !props.isEmpty {
                _ = try? systemctl(["set-property", "--runtime", slice] + props)
                slicesApplied.withLock { $0[slice] = nil }  // the next division puts the share back
            }
        }
    }
}
