import AgentAPI
import ClusterModel
import ControllerAPI
import Foundation

/// Storage pools declared once in the manifest and realized on every host that should see them; VM
/// disks in pools become volumes on the VM's host before it is defined.
extension Controller {
    /// What a host is given: every pool it sees (by `hosts` and, for shared pools, `site`).
    static func storageSettings(_ manifest: ClusterManifest, host: ClusterManifest.Host) -> [StoragePoolSetting] {
        (manifest.storagePools ?? []).filter { $0.isSeen(by: host.name, site: host.site) }.map { p in
            StoragePoolSetting(name: p.name, type: p.type, path: p.path, volumeGroup: p.volumeGroup,
                               rbd: p.rbd.map { RBDSource(pool: $0.pool, monitors: $0.monitors, user: $0.user, secretUUID: $0.secretUUID) })
        }
    }

    /// Gives every answering host its pools: when they changed, and every 30 s (a pool a host could not
    /// realize, say a shared file system mounted late, is tried again); keeps what each host reports.
    func enforceStorage(_ manifest: ClusterManifest, observed: Observed) async {
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let hosts = (manifest.hosts ?? []).filter { $0.agent != nil && observed.inventories[$0.name] != nil }
        let due = hosts.map { ($0, Self.storageSettings(manifest, host: $0)) }.filter { h, want in
            storageState.withLock { s in
                guard let last = s[h.name] else { return true }
                return last.settings != want || now - last.atMs >= 30_000
            }
        }
        guard !due.isEmpty else { return }
        await withTaskGroup(of: Void.self) { group in
            for (h, want) in due {
                group.addTask {
                    var state = HostStorage(settings: want, pools: [], error: nil, atMs: now)
                    do {
                        state.pools = try await self.agents.applyStoragePools(h.agent!, StoragePoolsRequest(pools: want))
                    } catch {
                        state.error = "\(error)"
                        self.logger.warning("storage pools not applied", metadata: ["host": "\(h.name)", "error": "\(error)"])
                    }
                    for p in state.pools where p.error != nil && want.contains(where: { $0.name == p.name }) {
                        self.logger.warning("storage pool unusable", metadata: ["host": "\(h.name)", "pool": "\(p.name)", "error": "\(p.error!)"])
                    }
                    self.storageState.withLock { $0[h.name] = state }
                }
            }
        }
    }

    /// Makes the volumes of a VM's pool disks on `agent` (idempotent: existing volumes are kept as
    /// they are, with their data).
    func ensureVolumes(_ spec: VMSpec, agent: String) async throws {
        for (i, d) in spec.disks.enumerated() where d.path == nil {
            guard let pool = d.pool else { continue }
            _ = try await agents.createVolume(
                agent, pool: pool, name: Self.volumeName(vm: spec.name, disk: i),
                VolumeRequest(sizeGiB: d.sizeGiB, format: d.format, from: d.from.flatMap { VMSpec.Disk.templateReference($0, pool: pool) },
                              clone: d.from == nil ? nil : (d.clone ?? "linked")))
        }
    }

    /// Each pool with what every host that should see it reports.
    public func storagePoolViews() async throws -> [StoragePoolView] {
        let manifest = try await desired()
        let state = storageState.withLock { $0 }
        return (manifest.storagePools ?? []).map { p in
            var hosts: [StoragePoolView.OnHost] = []
            for h in manifest.hosts ?? [] where p.isSeen(by: h.name, site: h.site) {
                let seen = state[h.name]
                if let s = seen?.pools.first(where: { $0.name == p.name }) {
                    hosts.append(.init(host: h.name, active: s.active, capacityBytes: s.capacityBytes, allocationBytes: s.allocationBytes,
                                       availableBytes: s.availableBytes, volumes: s.volumes, error: s.error))
                } else {
                    hosts.append(.init(host: h.name, active: false, capacityBytes: 0, allocationBytes: 0, availableBytes: 0, volumes: 0,
                                       error: seen?.error ?? "not reported yet"))
                }
            }
            return StoragePoolView(name: p.name, type: p.type, path: p.path, volumeGroup: p.volumeGroup, site: p.site, hosts: hosts)
        }
    }

    /// Free bytes of each pool on each host, for placement (a pool a host does not have, or cannot use,
    /// is absent).
    func storageFree() -> [String: [String: UInt64]] {
        storageState.withLock { s in
            s.mapValues { h in Dictionary(h.pools.filter { $0.active && $0.error == nil }.map { ($0.name, $0.availableBytes) }, uniquingKeysWith: { a, _ in a }) }
        }
    }
}

/// What a host last reported of its storage pools.
struct HostStorage: Sendable {
    var settings: [StoragePoolSetting]
    var pools: [StoragePoolStatus]
    var error: String?
    var atMs: Int64
}

extension Controller {
    /// Storage vMotion: moves disk `index` of a running VM into `pool` on its host while it runs. The
    /// agent copies and pivots; once it has, the desired state names the new pool (so a redefinition
    /// keeps the new path) and the old volume is deleted. Returns the agent's first status; follow it
    /// with `diskMoves`.
    public func moveStorage(vm: String, _ req: MoveStorageRequest) async throws -> DiskMoveStatus {
        let manifest = try await desired()
        guard let spec = (manifest.vms ?? []).first(where: { $0.name == vm }) else { throw ControllerServer.NotFound(what: "vm \(vm)") }
        guard req.disk >= 0, req.disk < spec.disks.count else {
            throw ValidationFailure([ValidationProblem("disk", "\(vm) has \(spec.disks.count) disks (0-based)")])
        }
        guard let from = spec.disks[req.disk].pool else {
            throw ValidationFailure([ValidationProblem("disk", "disk \(req.disk) of \(vm) is a path, not a volume in a storage pool")])
        }
        guard from != req.pool else { throw ValidationFailure([ValidationProblem("pool", "disk \(req.disk) of \(vm) is in \(from) already")]) }
        guard let pool = (manifest.storagePools ?? []).first(where: { $0.name == req.pool }) else {
            throw ValidationFailure([ValidationProblem("pool", "unknown storage pool \(req.pool)")])
        }
        guard let (h, agent) = try await hostOf(vm, manifest) else { throw Conflict("\(vm) is not on a host") }
        let host = h.name
        guard pool.isSeen(by: host, site: h.site) else { throw Conflict("host \(host) does not see pool \(req.pool)") }
        guard pool.type != "rbd" else { throw Conflict("pool \(req.pool) is rbd: disks move into dir, shared or logical pools") }
        if let b = req.bandwidthMiBps, !(1...100_000).contains(b) { throw ValidationFailure([ValidationProblem("bandwidthMiBps", "must be between 1 and 100000")]) }
        let target = VMSpec.diskTarget(req.disk)
        let volume = Self.volumeName(vm: vm, disk: req.disk)
        let started = try await agents.moveDisk(agent, vm, DiskMoveRequest(target: target, pool: req.pool, volume: volume, bandwidthMiBps: req.bandwidthMiBps))
        try await store.addEvent(source: "controller", kind: "vm", name: vm, event: "move-storage", detail: host,
                                 message: "disk \(req.disk) from \(from) to \(req.pool)")
        Task {
            // The agent's record is in its memory: an agent that restarts or stops answering for ten
            // minutes ends the watch (the move is reported lost; the guest is on whichever disk libvirt has).
            var misses = 0
            while true {
                try? await Task.sleep(for: .milliseconds(500))
                guard let now = try? await self.agents.diskMoves(agent, vm).first(where: { $0.target == target && $0.startedMs == started.startedMs }) else {
                    misses += 1
                    if misses > 1200 {
                        try? await self.store.addEvent(source: "controller", kind: "vm", name: vm, event: "storage-move-lost", detail: host,
                                                       message: "the agent no longer reports the move of disk \(req.disk)")
                        return
                    }
                    continue
                }
                misses = 0
                if now.state == "completed" {
                    do {
                        let (disk, pool) = (req.disk, req.pool)
                        _ = try await self.updateVM(vm) { spec in
                            if spec.disks.indices.contains(disk) { spec.disks[disk].pool = pool }
                        }
                        try await self.store.addEvent(source: "controller", kind: "vm", name: vm, event: "storage-moved", detail: host,
                                                      message: "disk \(req.disk) now in \(req.pool) (\(now.destination))")
                        // The old volume, once nothing uses it (the redefinition that follows names the new one).
                        for _ in 0..<60 {
                            do {
                                try await self.agents.deleteVolume(agent, pool: from, name: volume)
                                break
                            } catch {
                                try? await Task.sleep(for: .seconds(2))
                            }
                        }
                    } catch {
                        self.logger.error("recording a storage move failed", metadata: ["vm": "\(vm)", "error": "\(error)"])
                    }
                    return
                }
                if now.state == "failed" {
                    try? await self.store.addEvent(source: "controller", kind: "vm", name: vm, event: "storage-move-failed", detail: host, message: now.error)
                    return
                }
            }
        }
        return started
    }

    /// The storage moves of a VM on its host.
    public func storageMoves(vm: String) async throws -> [DiskMoveStatus] {
        guard let (_, agent) = try await hostOf(vm, try await desired()) else { throw ControllerServer.NotFound(what: "vm \(vm) on a host") }
        return try await agents.diskMoves(agent, vm)
    }

    /// The host a VM is recorded on and its agent's URL.
    func hostOf(_ vm: String, _ manifest: ClusterManifest) async throws -> (ClusterManifest.Host, String)? {
        guard let host = try await store.vmStatuses().first(where: { $0.name == vm })?.host,
            let h = (manifest.hosts ?? []).first(where: { $0.name == host }), let agent = h.agent
        else { return nil }
        return (h, agent)
    }
}
