import AgentAPI
import ClusterModel
import DomainXML
import FoundationEssentials
import Libvirt
import Synchronization

/// Storage vMotion on this host: a running VM's disk copied into a volume of another pool while the
/// guest runs (libvirt block copy: the whole chain flattened into the copy, new writes mirrored), then
/// a pivot to the copy. The source image is left where it was: the caller deletes it once it knows
/// nothing else needs it.
public final class DiskMoves: Sendable {
    let moves = Mutex<[String: DiskMoveStatus]>([:])

    public init() {}

    static func key(_ vm: String, _ target: String) -> String { vm + "/" + target }

    public func get(_ vm: String) -> [DiskMoveStatus] {
        moves.withLock { m in m.values.filter { $0.vm == vm }.sorted { $0.target < $1.target } }
    }

    func update(_ vm: String, _ target: String, _ change: (inout DiskMoveStatus) -> Void) {
        moves.withLock { m in
            if var s = m[Self.key(vm, target)] {
                change(&s)
                m[Self.key(vm, target)] = s
            }
        }
    }
}

extension HostAgent {
    static func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    public func moveDisk(_ vm: String, _ req: DiskMoveRequest) async throws(AgentError) -> DiskMoveStatus {
        var problems: [ValidationProblem] = []
        if !Names.isValid(vm) { problems.append(.init("name", "must match ^[a-z][a-z0-9-]{0,62}$")) }
        if req.target.count != 3 || !req.target.hasPrefix("vd") || !(req.target.last!.isASCII && req.target.last!.isLowercase) {
            problems.append(.init("target", "must be a disk target like vda"))
        }
        if !Names.isValid(req.pool) { problems.append(.init("pool", "must match ^[a-z][a-z0-9-]{0,62}$")) }
        if !Self.isVolumeName(req.volume) { problems.append(.init("volume", "1 to 128 letters, digits, . _ -, starting with a letter or digit")) }
        if let b = req.bandwidthMiBps, !(1...100_000).contains(b) { problems.append(.init("bandwidthMiBps", "must be between 1 and 100000")) }
        if !problems.isEmpty { throw AgentError.invalid(problems) }
        let key = DiskMoves.key(vm, req.target)
        if let running = diskMoves.moves.withLock({ $0[key] }), running.endedMs == nil {
            throw AgentError.conflict("\(vm)'s \(req.target) is already moving to \(running.destination)")
        }
        // The disk as the running domain has it.
        let source = try await withLibvirt { c -> String in
            let d = try c.domain(named: vm)
            guard try d.state().0 == .running || d.state().0 == .paused else {
                throw AgentError.conflict("\(vm) is not running: move a stopped VM's disk by copying its volume")
            }
            guard let disk = try DomainXML.parse(try d.xml()).disks.first(where: { $0.target == req.target }) else {
                throw AgentError.notFound("disk \(req.target) of \(vm)")
            }
            return disk.path
        }
        let bytes: UInt64
        do {
            bytes = try await Self.imageInfo(source)?["virtual-size"]?.uint64 ?? 0
        } catch {
            throw AgentError.conflict("\(vm)'s \(req.target) (\(source)) cannot be read: \(error)")
        }
        let (destination, destFormat) = try await withLibvirt { c -> (String, String) in
            let p = try c.storagePool(named: req.pool)
            try p.refresh()
            if (try? p.volume(named: req.volume)) != nil {
                throw AgentError.conflict("\(req.pool)/\(req.volume) exists already; not overwritten")
            }
            let (type, _) = try StorageXML.parsePool(try p.xml())
            guard type == "dir" || type == "logical" else {
                throw AgentError.conflict("pool \(req.pool) is \(type): disks move into dir, shared or logical pools")
            }
            let fmt = type == "logical" ? "raw" : "qcow2"
            let v = try p.createVolume(xml: StorageXML.volume(name: req.volume, capacityBytes: bytes, format: fmt))
            let path = try v.path()
            guard path != source else { throw AgentError.conflict("\(req.target) is in \(req.pool)/\(req.volume) already") }
            return (path, fmt)
        }
        let status = DiskMoveStatus(vm: vm, target: req.target, source: source, destination: destination, state: "copying",
                                    copiedBytes: 0, totalBytes: bytes, error: nil, startedMs: Self.now(), endedMs: nil)
        diskMoves.moves.withLock { $0[key] = status }
        let bandwidth = req.bandwidthMiBps.map { UInt64($0) << 20 }
        do {
            try await withLibvirt { c in
                try c.domain(named: vm).blockCopy(disk: req.target, destinationXML: DiskXML.copyDestination(path: destination, format: destFormat, block: destination.hasPrefix("/dev/")),
                                                  bandwidthBytesPerSecond: bandwidth)
            }
        } catch {
            diskMoves.update(vm, req.target) { $0.state = "failed"; $0.error = "\(error)"; $0.endedMs = Self.now() }
            _ = try? await withLibvirt { c in try c.storagePool(named: req.pool).volume(named: req.volume).delete() }
            throw error
        }
        hub.publish(kind: "diskMove", domain: vm, event: "started", detail: req.target, info: ["source": source, "destination": destination])
        Task { await self.followDiskMove(vm, req, destination: destination) }
        return status
    }

    /// The image the running domain has for disk `target`.
    func livePath(_ vm: String, _ target: String) async throws(AgentError) -> String? {
        try await withLibvirt { c in try DomainXML.parse(try c.domain(named: vm).xml()).disks.first { $0.target == target }?.path }
    }

    /// Follows the copy until it has caught up, then pivots; a job that vanishes or fails leaves the
    /// guest on its source (the copy is deleted).
    func followDiskMove(_ vm: String, _ req: DiskMoveRequest, destination: String) async {
        let deadline = ContinuousClock.now + .seconds(6 * 3600)
        while true {
            try? await Task.sleep(for: .milliseconds(200))
            do {
                let job = try await withLibvirt { c in try c.domain(named: vm).blockJob(disk: req.target) }
                guard let job else { throw AgentError.conflict("the copy job ended before it caught up (the guest stays on its source)") }
                diskMoves.update(vm, req.target) { $0.copiedBytes = job.current; $0.totalBytes = max($0.totalBytes, job.end) }
                guard job.ready else {
                    if ContinuousClock.now > deadline { throw AgentError.conflict("the copy did not catch up within 6 hours (the guest writes faster than it copies); cancelled") }
                    continue
                }
                diskMoves.update(vm, req.target) { $0.state = "pivoting" }
                try await withLibvirt { c in try c.domain(named: vm).blockJobAbort(disk: req.target, pivot: true) }
                let now = try await livePath(vm, req.target)
                guard now == destination else { throw AgentError.conflict("after the pivot \(req.target) is \(now ?? "gone"), not \(destination)") }
                diskMoves.update(vm, req.target) { $0.state = "completed"; $0.endedMs = Self.now() }
                hub.publish(kind: "diskMove", domain: vm, event: "completed", detail: req.target, info: ["destination": destination])
                return
            } catch {
                _ = try? await withLibvirt { c in try c.domain(named: vm).blockJobAbort(disk: req.target, pivot: false) }
                // The copy goes only if the guest is not on it: a pivot that took effect before the
                // error made it the live disk.
                let live = try? await livePath(vm, req.target)
                if live == destination {
                    diskMoves.update(vm, req.target) { $0.state = "completed"; $0.endedMs = Self.now() }
                    hub.publish(kind: "diskMove", domain: vm, event: "completed", detail: req.target, info: ["destination": destination])
                    return
                }
                if live != nil {
                    _ = try? await withLibvirt { c in try c.storagePool(named: req.pool).volume(named: req.volume).delete() }
                }
                diskMoves.update(vm, req.target) { $0.state = "failed"; $0.error = "\(error)"; $0.endedMs = Self.now() }
                hub.publish(kind: "diskMove", domain: vm, event: "failed", detail: req.target, info: ["error": "\(error)"])
                return
            }
        }
    }
}
