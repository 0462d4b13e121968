import AgentAPI
import ClusterModel
import DomainXML
import FoundationEssentials
import Glibc
import Libvirt

/// Storage pools and volumes on this host, through libvirt's storage drivers (`dir`, `logical`,
/// `rbd`; `shared` is a directory pool on a file system every host of a site mounts). Pools are
/// defined, built, started and autostarted as the controller lists them and never removed by
/// omission; a volume a domain uses, or one that is another volume's template, is never deleted.
extension HostAgent {
    static let poolTypes: Set<String> = ["dir", "shared", "logical", "rbd"]

    /// Problems with one pool setting, each naming its field under `at`.
    static func problems(_ p: StoragePoolSetting, at: String) -> [ValidationProblem] {
        var out: [ValidationProblem] = []
        if !Names.isValid(p.name) { out.append(.init("\(at).name", "must match ^[a-z][a-z0-9-]{0,62}$")) }
        guard Self.poolTypes.contains(p.type) else {
            return out + [.init("\(at).type", "must be dir, shared, logical or rbd")]
        }
        switch p.type {
        case "dir", "shared":
            if let path = p.path, !Self.isCleanAbsolutePath(path) {
                out.append(.init("\(at).path", "must be an absolute path without .. or control characters"))
            } else if p.path == nil {
                out.append(.init("\(at).path", "is required for a \(p.type) pool"))
            }
        case "logical":
            if let vg = p.volumeGroup, !Self.isLVMName(vg) {
                out.append(.init("\(at).volumeGroup", "must be an LVM name: letters, digits, + _ . - (not starting with -)"))
            } else if p.volumeGroup == nil {
                out.append(.init("\(at).volumeGroup", "is required for a logical pool"))
            }
        default:
            guard let r = p.rbd else { return out + [.init("\(at).rbd", "is required for an rbd pool")] }
            if !Self.isLVMName(r.pool) { out.append(.init("\(at).rbd.pool", "must be a Ceph pool name")) }
            out += VMSpec.monitorProblems(r.monitors, at: "\(at).rbd.monitors")
            if let u = r.user, u.isEmpty || u.count > 64 || !u.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }) {
                out.append(.init("\(at).rbd.user", "must be a Ceph user name"))
            }
            if let s = r.secretUUID, UUID(uuidString: s) == nil { out.append(.init("\(at).rbd.secretUUID", "must be a UUID")) }
        }
        return out
    }

    static func isCleanAbsolutePath(_ p: String) -> Bool {
        p.hasPrefix("/") && p.count <= 4096 && !p.split(separator: "/").contains("..") && !p.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7f }
            && (p == "/" || !p.hasSuffix("/")) && !p.contains("//")
    }

    static func isLVMName(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 127 && !s.hasPrefix("-") && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "+_.-".contains($0)) } && s != "." && s != ".."
    }

    static func isVolumeName(_ s: String) -> Bool { VMSpec.Disk.isVolumeName(s) }

    static func poolXML(_ p: StoragePoolSetting) -> String {
        switch p.type {
        case "logical": return StorageXML.logicalPool(name: p.name, volumeGroup: p.volumeGroup!)
        case "rbd": return StorageXML.rbdPool(name: p.name, pool: p.rbd!.pool, monitors: p.rbd!.monitors, user: p.rbd!.user, secretUUID: p.rbd!.secretUUID)
        default: return StorageXML.dirPool(name: p.name, path: p.path!)
        }
    }

    /// The libvirt pool type of a setting (`shared` is libvirt's `dir` on a shared file system).
    static func libvirtType(_ p: StoragePoolSetting) -> String { p.type == "shared" ? "dir" : p.type }

    public func applyStoragePools(_ request: StoragePoolsRequest) async throws(AgentError) -> [StoragePoolStatus] {
        var problems: [ValidationProblem] = []
        var names = Set<String>()
        for (i, p) in request.pools.enumerated() {
            problems += Self.problems(p, at: "pools[\(i)]")
            if !names.insert(p.name).inserted { problems.append(.init("pools[\(i)].name", "\(p.name) is listed twice")) }
        }
        if request.pools.count > 256 { problems.append(.init("pools", "at most 256")) }
        if !problems.isEmpty { throw AgentError.invalid(problems) }
        let pools = request.pools
        let errors = try await withLibvirt { c -> [String: String] in
            var errors: [String: String] = [:]
            for p in pools {
                do {
                    try Self.ensure(p, on: c)
                } catch {
                    errors[p.name] = "\(error)"
                }
            }
            return errors
        }
        storageErrors.withLock { $0 = errors }
        return try await storagePools()
    }

    /// Defines, builds and starts one pool (idempotent). A pool of that name with another definition is
    /// an error, not redefined: storage in use is not moved under a guest.
    static func ensure(_ p: StoragePoolSetting, on c: Connection) throws {
        let fm = FileManager.default
        if p.type == "shared", let path = p.path {
            var isDir = false
            guard fm.fileExists(atPath: path, isDirectory: &isDir), isDir else {
                throw AgentError.conflict("\(path) is not there: a shared pool's directory is the site's shared file system (NFS, CephFS, GFS2...), mounted on every host first")
            }
        }
        let pool: StoragePool
        if let existing = try? c.storagePool(named: p.name) {
            let (type, path) = try StorageXML.parsePool(try existing.xml())
            let wantPath = p.type == "logical" ? "/dev/" + (p.volumeGroup ?? "") : p.path
            guard type == libvirtType(p), p.type == "rbd" || path == wantPath else {
                throw AgentError.conflict("libvirt already has a pool \(p.name) of type \(type) at \(path ?? "-"); not redefined")
            }
            pool = existing
        } else {
            pool = try c.defineStoragePool(xml: poolXML(p))
            // A dir pool's build makes its directory; a logical one's would initialize disks: never.
            if p.type == "dir" { try pool.build() }
        }
        if !(try pool.info().active) { try pool.start() }
        if !pool.autostart { try pool.setAutostart(true) }
        try pool.refresh()
    }

    /// Every storage pool libvirt has on this host, with its figures.
    public func storagePools() async throws(AgentError) -> [StoragePoolStatus] {
        let errors = storageErrors.withLock { $0 }
        var out = try await withLibvirt { c -> [StoragePoolStatus] in
            try c.storagePools().map { p in
                let info = try p.info()
                let (type, path) = (try? StorageXML.parsePool(try p.xml())) ?? ("", nil)
                return StoragePoolStatus(
                    name: p.name, type: type, path: path, active: info.active, capacityBytes: info.capacityBytes,
                    allocationBytes: info.allocationBytes, availableBytes: info.availableBytes,
                    volumes: info.active ? ((try? p.volumes().count) ?? 0) : 0, error: errors[p.name])
            }
        }
        // Pools the controller asked for that libvirt could not define at all.
        for (name, error) in errors where !out.contains(where: { $0.name == name }) {
            out.append(StoragePoolStatus(name: name, type: "", path: nil, active: false, capacityBytes: 0, allocationBytes: 0, availableBytes: 0, volumes: 0, error: error))
        }
        return out.sorted { $0.name < $1.name }
    }

    /// `qemu-img info` of an image as JSON (nil when qemu-img prints something else). `-U`: the image
    /// may be in use by a running guest; reading its header is safe.
    static func imageInfo(_ path: String) async throws -> JSONValue? {
        let text = try await Subprocess.run("qemu-img", ["info", "-U", "--output=json", "--", path])
        let value = try JSONValue(parsing: Data(text.utf8))
        return value.object == nil ? nil : value
    }

    /// A path with its symbolic links resolved; nil when it does not exist.
    static func realPath(_ path: String) -> String? {
        realpath(path, nil).map { p in
            defer { free(p) }
            return String(cString: p)
        }
    }

    /// Whether a disk image path lies, symbolic links resolved, in one of this host's storage pools or
    /// in a directory the agent's configuration allows (`diskDirs`). A path that does not exist yet is
    /// judged by its directory. Returns the problem, or nil.
    func diskPathProblem(_ path: String) async throws(AgentError) -> String? {
        guard Self.isCleanAbsolutePath(path) else { return "must be an absolute path without .. or //" }
        guard let real = Self.resolved(path) else { return "\(path) is in no directory of this host" }
        let (poolDirs, known) = try await withLibvirt { c -> ([String], Bool) in
            let dirs = try c.storagePools().compactMap { p -> String? in (try? StorageXML.parsePool(try p.xml()))?.path }
            // A volume libvirt itself knows (an LVM volume's /dev/VG/LV resolves to /dev/dm-N, outside its
            // pool's directory).
            return (dirs, (try? c.storageVolume(path: path)) != nil)
        }
        if known { return nil }
        let roots = (config.diskDirs + poolDirs).filter { $0 != "/" && Self.isCleanAbsolutePath($0) }.compactMap(Self.resolved).filter { $0 != "/" && !$0.isEmpty }
        if roots.contains(where: { real.hasPrefix($0.hasSuffix("/") ? $0 : $0 + "/") }) { return nil }
        return "\(path) is in no storage pool of this host nor in its diskDirs (\(config.diskDirs.joined(separator: ", "))): a VM's disks live in pools"
    }

    /// A clean absolute path with its symbolic links resolved, also when it does not exist yet (an image
    /// about to be made, in directories about to be made): its nearest existing ancestor resolved, the
    /// rest appended (a clean path holds no `..`).
    static func resolved(_ path: String) -> String? {
        var components = path.split(separator: "/").map(String.init)
        var rest: [String] = []
        while true {
            if let base = realPath("/" + components.joined(separator: "/")) {
                return ([base == "/" ? "" : base] + rest).joined(separator: "/")
            }
            guard let last = components.popLast() else { return nil }
            rest.insert(last, at: 0)
        }
    }

    /// Paths of every disk of every domain on this host → the domains using them.
    static func diskUsers(_ c: Connection) throws -> [String: [String]] {
        var users: [String: [String]] = [:]
        for d in try c.domains() {
            // The live definition and the persistent one (after a storage move they differ until the
            // domain is defined again).
            var paths = Set<String>()
            for inactive in [false, true] {
                guard let def = try? DomainXML.parse(try d.xml(inactive: inactive)) else { continue }
                // A network disk `rbd:CEPHPOOL/IMAGE` is the libvirt volume of path `CEPHPOOL/IMAGE`.
                for disk in def.disks { paths.insert(disk.network ? String(disk.path.drop { $0 != ":" }.dropFirst()) : disk.path) }
            }
            for p in paths { users[p, default: []].append(d.name) }
        }
        return users
    }

    static func status(_ v: StorageVolume, pool: String, users: [String: [String]]) throws -> VolumeStatus {
        let path = try v.path()
        let sizes = try v.sizes()
        let (format, backing) = (try? StorageXML.parseVolume(try v.xml())) ?? (nil, nil)
        return VolumeStatus(pool: pool, name: v.name, path: path, format: format, capacityBytes: sizes.capacity,
                            allocationBytes: sizes.allocation, backing: backing, usedBy: (users[path] ?? []).sorted())
    }

    public func volumes(pool: String) async throws(AgentError) -> [VolumeStatus] {
        guard Names.isValid(pool) else { throw AgentError.invalid([.init("pool", "must match ^[a-z][a-z0-9-]{0,62}$")]) }
        return try await withLibvirt { c in
            let p = try c.storagePool(named: pool)
            try p.refresh()
            let users = try Self.diskUsers(c)
            return try p.volumes().map { try Self.status($0, pool: pool, users: users) }.sorted { $0.name < $1.name }
        }
    }

    public func createVolume(pool: String, name: String, _ req: VolumeRequest) async throws(AgentError) -> VolumeStatus {
        var problems: [ValidationProblem] = []
        if !Names.isValid(pool) { problems.append(.init("pool", "must match ^[a-z][a-z0-9-]{0,62}$")) }
        if !Self.isVolumeName(name) { problems.append(.init("name", "1 to 128 letters, digits, . _ -, starting with a letter or digit")) }
        if let s = req.sizeGiB, !(1...65_536).contains(s) { problems.append(.init("sizeGiB", "must be between 1 and 65536")) }
        let format = req.format ?? "qcow2"
        if !["qcow2", "raw"].contains(format) { problems.append(.init("format", "must be qcow2 or raw")) }
        let clone = req.clone ?? "linked"
        if !["linked", "full"].contains(clone) { problems.append(.init("clone", "must be linked or full")) }
        if req.clone != nil && req.from == nil { problems.append(.init("clone", "needs from")) }
        if let from = req.from {
            let parts = from.split(separator: "/", omittingEmptySubsequences: false)
            let isVolumeRef = parts.count == 2 && Names.isValid(String(parts[0])) && Self.isVolumeName(String(parts[1]))
            if !isVolumeRef && !Self.isCleanAbsolutePath(from) { problems.append(.init("from", "must be POOL/VOLUME or an absolute image path")) }
        } else if req.sizeGiB == nil {
            problems.append(.init("sizeGiB", "is required without from"))
        }
        if clone == "linked" && req.from != nil && format != "qcow2" { problems.append(.init("format", "a linked clone is qcow2")) }
        if !problems.isEmpty { throw AgentError.invalid(problems) }

        // The template's path, format and size (qemu-img reads what libvirt may not know).
        var template: (path: String, format: String, bytes: UInt64)?
        if let from = req.from {
            let path: String
            if from.hasPrefix("/") {
                // Symlinks resolved: the template must really lie in a template directory or a pool.
                guard let real = Self.realPath(from) else {
                    throw AgentError.invalid([.init("from", "\(from) does not exist on this host")])
                }
                let poolDirs = try await withLibvirt { c in
                    try c.storagePools().compactMap { p -> String? in (try? StorageXML.parsePool(try p.xml()))?.path }
                }
                let roots = (config.templateDirs + poolDirs).compactMap(Self.realPath)
                guard roots.contains(where: { real.hasPrefix($0.hasSuffix("/") ? $0 : $0 + "/") }) else {
                    throw AgentError.invalid([.init("from", "\(from) is in no template directory (templateDirs: \(config.templateDirs.joined(separator: ", "))) or storage pool")])
                }
                path = real
            } else {
                let parts = from.split(separator: "/").map(String.init)
                path = try await withLibvirt { c in try c.storagePool(named: parts[0]).volume(named: parts[1]).path() }
            }
            // A template a guest can write to could hold a forged image header (a backing file or an
            // external data file naming a host file or device): in-use images are refused, and so are
            // images that point at other files.
            let users = try await withLibvirt { c in try Self.diskUsers(c) }
            if let using = users[path], !using.isEmpty {
                throw AgentError.conflict("\(path) is a disk of \(using.sorted().joined(separator: ", ")): a template must not change under its clones")
            }
            let obj: JSONValue
            do {
                obj = try await Self.imageInfo(path) ?? .object([:])
            } catch {
                throw AgentError.invalid([.init("from", "\(path) cannot be read as a disk image: \(error)")])
            }
            let specific = obj["format-specific"]?["data"]
            if obj["backing-filename"] != nil || obj["full-backing-filename"] != nil || specific?["data-file"] != nil {
                throw AgentError.invalid([.init("from", "\(path) refers to other files (a backing or data file): flatten it into a standalone template first")])
            }
            let format = obj["format"]?.string ?? "raw"
            guard format == "qcow2" || format == "raw" else {
                throw AgentError.invalid([.init("from", "\(path) is \(format); templates are qcow2 or raw")])
            }
            template = (path, format, obj["virtual-size"]?.uint64 ?? 0)
        }
        let want = UInt64(req.sizeGiB ?? 0) << 30
        if let t = template, req.sizeGiB != nil, want < t.bytes {
            throw AgentError.invalid([.init("sizeGiB", "smaller than the template (\(t.bytes >> 20) MiB)")])
        }
        let capacity = max(want, template?.bytes ?? 0)
        let existing = try await withLibvirt { c -> VolumeStatus? in
            let p = try c.storagePool(named: pool)
            try p.refresh()
            guard let v = try? p.volume(named: name) else { return nil }
            return try Self.status(v, pool: pool, users: try Self.diskUsers(c))
        }
        if let existing { return existing }

        let copyFrom = template.map { $0.path }
        let templateFormat = template?.format ?? "raw"
        if clone == "full", let src = copyFrom {
            // A libvirt volume is copied by libvirt (any pool type); another image by qemu-img into a
            // directory pool.
            let viaLibvirt = try await withLibvirt { c -> VolumeStatus? in
                guard let source = try? c.storageVolume(path: src) else { return nil }
                let p = try c.storagePool(named: pool)
                // Logical and RBD volumes are raw block storage.
                let (type, _) = try StorageXML.parsePool(try p.xml())
                let v = try p.createVolume(xml: StorageXML.volume(name: name, capacityBytes: capacity, format: ["logical", "rbd"].contains(type) ? "raw" : format),
                                           copying: source)
                return try Self.status(v, pool: pool, users: [:])
            }
            if let viaLibvirt { return viaLibvirt }
            let (type, dir) = try await withLibvirt { c in try StorageXML.parsePool(try c.storagePool(named: pool).xml()) }
            guard type == "dir", let dir else {
                throw AgentError.conflict("\(src) is not a libvirt volume: a full copy of it goes into a dir or shared pool")
            }
            let target = dir + "/" + name
            do {
                _ = try await Subprocess.run("qemu-img", ["convert", "-U", "-f", templateFormat, "-O", format, "--", src, target])
                if capacity > template!.bytes { _ = try await Subprocess.run("qemu-img", ["resize", "-f", format, "--", target, String(capacity)]) }
            } catch {
                try? FileManager.default.removeItem(atPath: target)
                throw AgentError.conflict("copying \(src) into \(dir): \(error)")
            }
            return try await withLibvirt { c in
                let p = try c.storagePool(named: pool)
                try p.refresh()
                return try Self.status(try p.volume(named: name), pool: pool, users: [:])
            }
        }
        return try await withLibvirt { c in
            let p = try c.storagePool(named: pool)
            let (type, _) = try StorageXML.parsePool(try p.xml())
            if copyFrom != nil && type != "dir" {
                throw AgentError.conflict("linked clones (qcow2 backing files) live in dir or shared pools; pool \(pool) is \(type): use clone full")
            }
            let xml = StorageXML.volume(name: name, capacityBytes: capacity, format: ["logical", "rbd"].contains(type) ? "raw" : format,
                                        backingPath: copyFrom, backingFormat: templateFormat)
            return try Self.status(try p.createVolume(xml: xml), pool: pool, users: [:])
        }
    }

    public func resizeVolume(pool: String, name: String, _ req: VolumeResize) async throws(AgentError) -> VolumeStatus {
        guard (1...65_536).contains(req.sizeGiB) else { throw AgentError.invalid([.init("sizeGiB", "must be between 1 and 65536")]) }
        guard Names.isValid(pool), Self.isVolumeName(name) else { throw AgentError.notFound("volume \(pool)/\(name)") }
        return try await withLibvirt { c in
            let v = try c.storagePool(named: pool).volume(named: name)
            let bytes = UInt64(req.sizeGiB) << 30
            let current = try v.sizes().capacity
            guard bytes >= current else {
                throw AgentError.invalid([.init("sizeGiB", "volumes only grow (\(name) has \(current >> 20) MiB): shrinking would cut off a guest's data")])
            }
            if bytes > current { try v.resize(bytes: bytes) }
            return try Self.status(v, pool: pool, users: try Self.diskUsers(c))
        }
    }

    /// Deletes a volume no domain uses and no other volume is a linked clone of.
    public func deleteVolume(pool: String, name: String) async throws(AgentError) {
        guard Names.isValid(pool), Self.isVolumeName(name) else { throw AgentError.notFound("volume \(pool)/\(name)") }
        try await withLibvirt { c in
            let v = try c.storagePool(named: pool).volume(named: name)
            let path = try v.path()
            let users = try Self.diskUsers(c)
            if let using = users[path], !using.isEmpty {
                throw AgentError.conflict("\(pool)/\(name) is a disk of \(using.sorted().joined(separator: ", ")); not deleted")
            }
            for other in try c.storagePools() where (try? other.info().active) == true {
                for w in (try? other.volumes()) ?? [] where w.name != name || other.name != pool {
                    if let (_, backing) = try? StorageXML.parseVolume(try w.xml()), backing == path {
                        throw AgentError.conflict("\(pool)/\(name) is the template of \(other.name)/\(w.name); not deleted")
                    }
                }
            }
            try v.delete()
        }
    }
}

/// Disk snapshots: internal qcow2 snapshots made, listed, reverted to and deleted with qemu-img, on
/// volumes no running domain has open (qemu-img would corrupt an image a guest writes; the image lock
/// refuses it anyway).
extension HostAgent {
    /// The volume's path after checking it is a qcow2 image no running domain uses.
    func snapshotTarget(pool: String, volume: String, forChange: Bool) async throws(AgentError) -> String {
        guard Names.isValid(pool), Self.isVolumeName(volume) else { throw AgentError.notFound("volume \(pool)/\(volume)") }
        let (path, format, running) = try await withLibvirt { c -> (String, String?, [String]) in
            let v = try c.storagePool(named: pool).volume(named: volume)
            let path = try v.path()
            let format = (try? StorageXML.parseVolume(try v.xml()))?.format
            let users = try Self.diskUsers(c)[path] ?? []
            let running = users.filter { name in (try? c.domain(named: name).info().state.isActive) == true }
            return (path, format, running)
        }
        guard format == "qcow2" else { throw AgentError.conflict("\(pool)/\(volume) is \(format ?? "not qcow2"): snapshots live inside qcow2 images") }
        if forChange && !running.isEmpty {
            throw AgentError.conflict("\(pool)/\(volume) is open in running \(running.sorted().joined(separator: ", ")): stop the VM to snapshot or revert its disk")
        }
        return path
    }

    public func volumeSnapshots(pool: String, volume: String) async throws(AgentError) -> [VolumeSnapshot] {
        let path = try await snapshotTarget(pool: pool, volume: volume, forChange: false)
        do {
            let info = try await Self.imageInfo(path)
            let list = info?["snapshots"]?.array ?? []
            return list.compactMap { s in
                guard let name = s["name"]?.string else { return nil }
                return VolumeSnapshot(name: name, id: s["id"]?.string, dateSeconds: s["date-sec"]?.int64,
                                      vmStateBytes: s["vm-state-size"]?.uint64)
            }
        } catch {
            throw AgentError.internalError("qemu-img info \(path): \(error)")
        }
    }

    /// `create`, `apply` (revert) or `delete` one snapshot.
    public func changeSnapshot(pool: String, volume: String, snapshot: String, _ action: String) async throws(AgentError) -> [VolumeSnapshot] {
        // All digits would be taken for a snapshot ID by qemu-img (and could name another snapshot).
        guard Self.isVolumeName(snapshot), !snapshot.allSatisfy(\.isNumber) else {
            throw AgentError.invalid([.init("name", "1 to 128 letters, digits, . _ -, starting with a letter or digit, not all digits")])
        }
        let path = try await snapshotTarget(pool: pool, volume: volume, forChange: true)
        let existing = try await volumeSnapshots(pool: pool, volume: volume)
        let has = existing.contains { $0.name == snapshot }
        switch action {
        case "create" where has: throw AgentError.conflict("\(pool)/\(volume) has a snapshot \(snapshot) already")
        case "apply" where !has, "delete" where !has: throw AgentError.notFound("snapshot \(snapshot) of \(pool)/\(volume)")
        default: break
        }
        let flag = ["create": "-c", "apply": "-a", "delete": "-d"][action]!
        do {
            _ = try await Subprocess.run("qemu-img", ["snapshot", flag, snapshot, "--", path])
        } catch {
            // A lock held by a QEMU process (the image is open in a guest, maybe on another host).
            if "\(error)".contains("lock") { throw AgentError.conflict("\(pool)/\(volume) is open elsewhere: \(error)") }
            throw AgentError.internalError("qemu-img snapshot \(flag) \(snapshot): \(error)")
        }
        logger.info("volume snapshot", metadata: ["volume": "\(pool)/\(volume)", "snapshot": "\(snapshot)", "action": "\(action)"])
        return try await volumeSnapshots(pool: pool, volume: volume)
    }
}
