import ClusterModel

/// Builds placement's view of a described cluster (hosts with `capacity`, VMs with an optional `host`).
public enum ClusterSnapshot {
    public static let defaultCPUOvercommit = 4.0
    public static let defaultCoreMHz = 2000

    public static func hosts(_ manifest: ClusterManifest) -> [PlacementHost] {
        let cpuOver = manifest.settings?.placement?.cpuOvercommit ?? defaultCPUOvercommit
        let memOver = manifest.settings?.placement?.memoryOvercommit ?? 1
        return (manifest.hosts ?? []).map { h in
            let cap = h.capacity ?? .init(cpus: 0, memoryMiB: 0)
            return PlacementHost(
                name: h.name, site: h.site, state: PlacementHost.State(rawValue: h.state ?? "connected") ?? .connected,
                vcpuCapacity: Int((Double(cap.cpus) * cpuOver).rounded(.down)),
                memoryCapacityMiB: Int((Double(cap.memoryMiB) * memOver).rounded(.down)),
                cpuMHzCapacity: cap.cpus * (cap.cpuMHz ?? defaultCoreMHz))
        }
    }

    public static func vm(_ spec: VMSpec) -> PlacementVM {
        var v = PlacementVM(
            name: spec.name, cpus: spec.cpus, memoryMiB: spec.memoryMiB,
            reservationMHz: spec.resources?.cpu?.reservationMHz ?? 0, site: spec.placement?.site,
            hosts: spec.placement?.hosts.map(Set.init), antiAffinity: Set(spec.placement?.antiAffinity ?? []),
            affinity: Set(spec.placement?.affinity ?? []))
        // A new volume needs its size; a clone at least 1 GiB (a linked clone starts small, a full one is
        // the template's size, which only the host knows).
        for d in spec.disks where d.path == nil {
            if let pool = d.pool { v.storageGiB[pool, default: 0] += d.sizeGiB ?? 1 }
        }
        v.networks = Set(spec.nics.compactMap(\.network))
        return v
    }

    /// The cluster with the VMs that name a host already on it; returns the state and the VMs left to place.
    public static func state(_ manifest: ClusterManifest) -> (ClusterState, running: [PlacementVM], pending: [PlacementVM]) {
        var state = ClusterState(hosts: hosts(manifest))
        var index: [String: Int] = [:]
        for (i, h) in state.hosts.enumerated() { index[h.name] = i }
        var running: [PlacementVM] = []
        var pending: [PlacementVM] = []
        for spec in manifest.vms ?? [] {
            let v = vm(spec)
            state.noteConstraints(v)
            if let h = spec.host, let i = index[h] {
                state.commit(v, to: i)
                running.append(v)
            } else {
                pending.append(v)
            }
        }
        return (state, running, pending)
    }

    public static func strategy(_ manifest: ClusterManifest) -> Strategy {
        Strategy(rawValue: manifest.settings?.placement?.strategy ?? "spread") ?? .spread
    }
}
