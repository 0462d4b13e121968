import FoundationEssentials

/// One problem with an input document, named by its JSON path (`disks[0].path`).
public struct ValidationProblem: Error, Sendable, Equatable, CustomStringConvertible, Codable {
    public var path: String
    public var message: String
    public init(_ path: String, _ message: String) {
        self.path = path
        self.message = message
    }
    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}

/// Every problem found in a document; thrown as one error so callers report them all at once.
public struct ValidationFailure: Error, Sendable, CustomStringConvertible {
    public var problems: [ValidationProblem]
    public init(_ problems: [ValidationProblem]) { self.problems = problems }
    public var description: String { problems.map(\.description).joined(separator: "\n") }
}

public enum Names {
    /// `^[a-z][a-z0-9-]{0,62}$` (the contract's names).
    public static func isValid(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard let first = bytes.first, bytes.count <= 63, first >= 0x61, first <= 0x7a else { return false }
        return bytes.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d }
    }
}

/// Renders a Codable coding path as a JSON path: `disks[0].path`.
public func jsonPath(_ codingPath: [any CodingKey]) -> String {
    var out = ""
    for key in codingPath {
        if let i = key.intValue {
            out += "[\(i)]"
        } else {
            out += out.isEmpty ? key.stringValue : ".\(key.stringValue)"
        }
    }
    return out
}

extension VMSpec {
    /// Decodes and validates a VM spec, reporting unknown fields, wrong types, bounds and bad names
    /// with their JSON paths. `prefix` is prepended to every path (e.g. `vms[2]`).
    public static func decodeValidated(_ data: Data, prefix: String = "") throws(ValidationFailure) -> VMSpec {
        guard var problems = Shape.vmSpec.problems(in: data, prefix: prefix) else {
            throw ValidationFailure([ValidationProblem(prefix, "not valid JSON")])
        }
        if !problems.isEmpty { throw ValidationFailure(problems) }
        let spec: VMSpec
        do {
            spec = try JSONDecoder().decode(VMSpec.self, from: data)
        } catch let error as DecodingError {
            problems.append(problem(from: error, prefix: prefix))
            throw ValidationFailure(problems)
        } catch {
            throw ValidationFailure(problems + [ValidationProblem(prefix, "\(error)")])
        }
        problems += spec.validate(prefix: prefix)
        if !problems.isEmpty { throw ValidationFailure(problems) }
        return spec
    }

    /// Semantic checks of a decoded spec: bounds, names, paths, consistency.
    public func validate(prefix: String = "") -> [ValidationProblem] {
        func p(_ field: String) -> String { prefix.isEmpty ? field : "\(prefix).\(field)" }
        var out: [ValidationProblem] = []
        if !Names.isValid(name) {
            out.append(.init(p("name"), "must match ^[a-z][a-z0-9-]{0,62}$"))
        }
        if let uuid, UUID(uuidString: uuid) == nil {
            out.append(.init(p("uuid"), "must be a UUID"))
        }
        if cpus < 1 || cpus > 512 { out.append(.init(p("cpus"), "must be between 1 and 512")) }
        if memoryMiB < 16 { out.append(.init(p("memoryMiB"), "must be at least 16")) }
        if memoryMiB > 16 * 1024 * 1024 { out.append(.init(p("memoryMiB"), "must be at most 16777216")) }
        if let t = topology {
            if t.sockets < 1 || t.cores < 1 || t.threads < 1 || t.sockets > 512 || t.cores > 512 || t.threads > 512 {
                out.append(.init(p("topology"), "sockets, cores and threads must be between 1 and 512"))
            } else if t.sockets * t.cores * t.threads != cpus {
                out.append(.init(p("topology"), "sockets x cores x threads must equal cpus (\(cpus))"))
            }
        }
        if let machine, !Self.isToken(machine) {
            out.append(.init(p("machine"), "must be a machine type such as pc or q35"))
        }
        if let cpuModel, !Self.isToken(cpuModel) {
            out.append(.init(p("cpuModel"), "must be a CPU model name such as qemu64"))
        }
        if let boot {
            if !Self.isAbsolutePath(boot.kernel) { out.append(.init(p("boot.kernel"), "must be an absolute path")) }
            if let initrd = boot.initrd, !Self.isAbsolutePath(initrd) {
                out.append(.init(p("boot.initrd"), "must be an absolute path"))
            }
            if let cmdline = boot.cmdline,
                cmdline.utf8.count > 4096 || cmdline.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f })
            {
                out.append(.init(p("boot.cmdline"), "must be at most 4096 bytes without control characters"))
            }
        }
        if let path = resourcePoolPath {
            if path.isEmpty || path.count > 16 { out.append(.init(p("resourcePoolPath"), "must name 1 to 16 pools")) }
            for (i, n) in path.enumerated() where !Names.isValid(n) {
                out.append(.init(p("resourcePoolPath[\(i)]"), "must match ^[a-z][a-z0-9-]{0,62}$"))
            }
            if let rp = resourcePool, path.last != rp {
                out.append(.init(p("resourcePoolPath"), "must end with resourcePool (\(rp))"))
            }
        }
        if let g = graphics {
            if g.type != "vnc" { out.append(.init(p("graphics.type"), "must be vnc")) }
            if let l = g.listen, !Self.isIPAddress(l) { out.append(.init(p("graphics.listen"), "must be an IP address")) }
        }
        if disks.count > 26 { out.append(.init(p("disks"), "at most 26 disks")) }
        for (i, d) in disks.enumerated() {
            let dp = p("disks[\(i)]")
            if d.path == nil && d.pool == nil && d.rbd == nil {
                out.append(.init(dp, "needs a path (host level) or a pool (manifest level)"))
            }
            if let r = d.rbd {
                let parts = r.image.split(separator: "/", omittingEmptySubsequences: false)
                if parts.count != 2 || !parts.allSatisfy({ Disk.isVolumeName($0) }) { out.append(.init("\(dp).rbd.image", "must be CEPHPOOL/IMAGE")) }
                out += Self.monitorProblems(r.monitors, at: "\(dp).rbd.monitors")
                if let u = r.user, !Self.isToken(u) { out.append(.init("\(dp).rbd.user", "must be a Ceph user name")) }
                if let u = r.secretUUID, UUID(uuidString: u) == nil { out.append(.init("\(dp).rbd.secretUUID", "must be a UUID")) }
                if (r.user == nil) != (r.secretUUID == nil) { out.append(.init("\(dp).rbd", "cephx needs user and secretUUID together (or neither)")) }
                if d.path != nil || d.pool != nil { out.append(.init("\(dp).rbd", "an RBD disk has no path or pool of its own")) }
            }
            if let path = d.path, !Self.isAbsolutePath(path) { out.append(.init("\(dp).path", "must be an absolute path")) }
            if let f = d.format, f != "qcow2" && f != "raw" { out.append(.init("\(dp).format", "must be qcow2 or raw")) }
            if let pool = d.pool, !Names.isValid(pool) { out.append(.init("\(dp).pool", "must match ^[a-z][a-z0-9-]{0,62}$")) }
            if let s = d.sizeGiB, s < 1 || s > 65536 { out.append(.init("\(dp).sizeGiB", "must be between 1 and 65536")) }
            if let c = d.clone, c != "linked" && c != "full" { out.append(.init("\(dp).clone", "must be linked or full")) }
            if d.clone != nil && d.from == nil { out.append(.init("\(dp).clone", "needs from")) }
            if let from = d.from {
                if Disk.templateReference(from, pool: d.pool ?? "x") == nil {
                    out.append(.init("\(dp).from", "must be a volume of the disk's pool (VOLUME), POOL/VOLUME or an absolute image path"))
                }
                if d.pool == nil { out.append(.init("\(dp).from", "needs pool (the clone is made there)")) }
            }
            if d.pool != nil && d.path != nil { out.append(.init("\(dp).path", "give a pool (a volume is made) or a path, not both")) }
        }
        for (i, n) in nics.enumerated() {
            let np = p("nics[\(i)]")
            if n.network == nil && n.bridge == nil {
                out.append(.init(np, "needs a network (manifest level) or a bridge (host level)"))
            }
            if let net = n.network, !Names.isValid(net) { out.append(.init("\(np).network", "must match ^[a-z][a-z0-9-]{0,62}$")) }
            if let br = n.bridge, !Self.isInterfaceName(br) { out.append(.init("\(np).bridge", "must be a Linux interface name")) }
            if let mac = n.mac, !Self.isMAC(mac) { out.append(.init("\(np).mac", "must be a unicast MAC address like 52:54:00:12:34:56")) }
            if let m = n.model, !["virtio", "e1000", "rtl8139"].contains(m) {
                out.append(.init("\(np).model", "must be virtio, e1000 or rtl8139"))
            }
            if let pg = n.portGroup, !Names.isValid(pg) { out.append(.init("\(np).portGroup", "must match ^[a-z][a-z0-9-]{0,62}$")) }
            if n.portGroup != nil && n.network == nil { out.append(.init("\(np).portGroup", "belongs to a network: give network too")) }
            if let b = n.bandwidth { out += b.validate("\(np).bandwidth") }
            if let f = n.filter, !Self.isToken(f) { out.append(.init("\(np).filter", "must be a libvirt nwfilter name")) }
            if let m = n.mtu, !(576...65_535).contains(m) { out.append(.init("\(np).mtu", "must be between 576 and 65535")) }
        }
        if let r = resources {
            if let c = r.cpu {
                if let v = c.reservationMHz, v < 0 { out.append(.init(p("resources.cpu.reservationMHz"), "must be at least 0")) }
                if let v = c.limitMHz, v < 1 { out.append(.init(p("resources.cpu.limitMHz"), "must be at least 1")) }
                // Upper bounds keep every product below (MHz × period, MiB × 1024) far from overflow.
                if let v = c.limitMHz, v > 100_000_000 { out.append(.init(p("resources.cpu.limitMHz"), "must be at most 100000000")) }
                if let v = c.reservationMHz, v > 100_000_000 { out.append(.init(p("resources.cpu.reservationMHz"), "must be at most 100000000")) }
                if let l = c.limitMHz, let res = c.reservationMHz, l < res {
                    out.append(.init(p("resources.cpu.limitMHz"), "must not be below reservationMHz (\(res))"))
                }
                if case .custom(let n) = c.shares, n < 2 || n > 262_144 {
                    out.append(.init(p("resources.cpu.shares"), "must be between 2 and 262144"))
                }
            }
            if let m = r.memory {
                if let v = m.reservationMiB, v < 0 { out.append(.init(p("resources.memory.reservationMiB"), "must be at least 0")) }
                if let v = m.reservationMiB, v > memoryMiB {
                    out.append(.init(p("resources.memory.reservationMiB"), "must not exceed memoryMiB (\(memoryMiB))"))
                }
                if let v = m.limitMiB, v < 16 { out.append(.init(p("resources.memory.limitMiB"), "must be at least 16")) }
                if let v = m.limitMiB, v > 16 * 1024 * 1024 { out.append(.init(p("resources.memory.limitMiB"), "must be at most 16777216")) }
                if let l = m.limitMiB, let res = m.reservationMiB, l < res {
                    out.append(.init(p("resources.memory.limitMiB"), "must not be below reservationMiB (\(res))"))
                }
                if case .custom(let n) = m.shares, n < 1 {
                    out.append(.init(p("resources.memory.shares"), "must be at least 1"))
                }
            }
        }
        if let rp = resourcePool, !Names.isValid(rp) {
            out.append(.init(p("resourcePool"), "must match ^[a-z][a-z0-9-]{0,62}$"))
        }
        return out
    }

    /// Ceph monitors as an rbd pool or disk lists them: 1 to 16, each a host, host:port or [v6]:port.
    public static func monitorProblems(_ monitors: [String], at: String) -> [ValidationProblem] {
        var out: [ValidationProblem] = []
        if monitors.isEmpty || monitors.count > 16 { out.append(.init(at, "must list 1 to 16 monitors")) }
        for (i, m) in monitors.enumerated() where m.isEmpty || m.count > 255 || !m.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || ".-:[]".contains($0)) }) {
            out.append(.init("\(at)[\(i)]", "must be a host, host:port or [v6]:port"))
        }
        return out
    }

    static func isToken(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 64
            && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7a) || $0 == 0x2d || $0 == 0x2e || $0 == 0x5f }
    }

    /// Absolute, normalized, printable: no `..` segment, no control characters.
    static func isAbsolutePath(_ s: String) -> Bool {
        guard s.hasPrefix("/"), s.utf8.count <= 4096 else { return false }
        if s.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) { return false }
        return !s.split(separator: "/").contains("..")
    }

    /// A dotted IPv4 address, or an IPv6 address (hex groups and colons).
    static func isIPAddress(_ s: String) -> Bool {
        let v4 = s.split(separator: ".", omittingEmptySubsequences: false)
        if v4.count == 4, v4.allSatisfy({ UInt8($0) != nil && $0.count <= 3 && $0.allSatisfy { $0.isASCII } }) { return true }
        return s.contains(":") && s.count <= 45 && s.allSatisfy { $0.isASCII && ($0.isHexDigit || $0 == ":" || $0 == ".") }
    }

    public static func isInterfaceName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 15 && s != "." && s != ".."
            && s.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f && $0 != 0x2f && $0 != 0x3a }
    }

    public static func isMAC(_ s: String) -> Bool {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6, parts.allSatisfy({ $0.count == 2 && UInt8($0, radix: 16) != nil }) else { return false }
        return (UInt8(parts[0], radix: 16)! & 1) == 0
    }
}

func problem(from error: DecodingError, prefix: String) -> ValidationProblem {
    func join(_ path: [any CodingKey]) -> String {
        let rel = jsonPath(path)
        if prefix.isEmpty { return rel }
        if rel.isEmpty { return prefix }
        return rel.hasPrefix("[") ? prefix + rel : "\(prefix).\(rel)"
    }
    switch error {
    case .typeMismatch(let type, let ctx):
        return .init(join(ctx.codingPath), "must be \(typeName(type))")
    case .valueNotFound(let type, let ctx):
        return .init(join(ctx.codingPath), "must be \(typeName(type)), not null")
    case .keyNotFound(let key, let ctx):
        return .init(join(ctx.codingPath + [key]), "is required")
    case .dataCorrupted(let ctx):
        return .init(join(ctx.codingPath), ctx.debugDescription)
    @unknown default:
        return .init(prefix, "\(error)")
    }
}

private func typeName(_ type: Any.Type) -> String {
    switch type {
    case is Int.Type: return "an integer"
    case is String.Type: return "a string"
    case is Bool.Type: return "a boolean"
    case is Double.Type: return "a number"
    default:
        let n = "\(type)"
        if n.hasPrefix("Array") { return "an array" }
        if n.hasPrefix("Dictionary") { return "an object" }
        return "an object"
    }
}

