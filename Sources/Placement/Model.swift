/// A host as placement sees it: capacity after overcommit, what is already used on it.
public struct PlacementHost: Sendable, Equatable {
    public enum State: String, Sendable, Codable { case connected, maintenance, poweredOff, disconnected }

    public var name: String
    public var site: String?
    public var state: State
    /// vCPUs it may run (physical CPUs × CPU overcommit).
    public var vcpuCapacity: Int
    /// Memory it may commit to VMs (MiB).
    public var memoryCapacityMiB: Int
    /// Physical CPU speed in total (cores × MHz), for CPU reservations.
    public var cpuMHzCapacity: Int
    public var usedVCPUs: Int = 0
    public var usedMemoryMiB: Int = 0
    public var reservedMHz: Int = 0
    public var vms: Set<String> = []
    /// Free space of each storage pool this host has (GiB); nil: not known, storage is not checked.
    public var storageFreeGiB: [String: Int]?
    /// Networks this host reported it cannot build, with why (a VLAN without 802.1q, a missing uplink).
    public var unusableNetworks: [String: String] = [:]

    public init(name: String, site: String? = nil, state: State = .connected, vcpuCapacity: Int, memoryCapacityMiB: Int, cpuMHzCapacity: Int) {
        self.name = name
        self.site = site
        self.state = state
        self.vcpuCapacity = vcpuCapacity
        self.memoryCapacityMiB = memoryCapacityMiB
        self.cpuMHzCapacity = cpuMHzCapacity
    }

    public var freeVCPUs: Int { vcpuCapacity - usedVCPUs }
    public var freeMemoryMiB: Int { memoryCapacityMiB - usedMemoryMiB }
    public var freeMHz: Int { cpuMHzCapacity - reservedMHz }

    /// Commits a VM to this host.
    public mutating func add(_ vm: PlacementVM) {
        usedVCPUs += vm.cpus
        usedMemoryMiB += vm.memoryMiB
        reservedMHz += vm.reservationMHz
        vms.insert(vm.name)
        if !vm.storageGiB.isEmpty, storageFreeGiB != nil {
            for (pool, gib) in vm.storageGiB { storageFreeGiB![pool, default: 0] -= gib }
        }
    }

    public mutating func remove(_ vm: PlacementVM) {
        guard vms.remove(vm.name) != nil else { return }
        usedVCPUs -= vm.cpus
        usedMemoryMiB -= vm.memoryMiB
        reservedMHz -= vm.reservationMHz
        if !vm.storageGiB.isEmpty, storageFreeGiB != nil {
            for (pool, gib) in vm.storageGiB { storageFreeGiB![pool, default: 0] += gib }
        }
    }
}

/// A VM to place: its size, reservations and constraints. Memory is committed whole (a VM's memory
/// is never overcommitted below its configured size unless the host's memory capacity says so).
public struct PlacementVM: Sendable, Equatable {
    public var name: String
    public var cpus: Int
    public var memoryMiB: Int
    public var reservationMHz: Int
    public var site: String?
    /// When set, only these hosts.
    public var hosts: Set<String>?
    /// VMs it must not share a host with (the relation is symmetric).
    public var antiAffinity: Set<String>
    /// VMs it must share a host with.
    public var affinity: Set<String>
    /// Space its new volumes need in each storage pool (GiB).
    public var storageGiB: [String: Int] = [:]
    /// The networks its NICs plug into.
    public var networks: Set<String> = []

    public init(
        name: String, cpus: Int, memoryMiB: Int, reservationMHz: Int = 0, site: String? = nil, hosts: Set<String>? = nil,
        antiAffinity: Set<String> = [], affinity: Set<String> = []
    ) {
        self.name = name
        self.cpus = cpus
        self.memoryMiB = memoryMiB
        self.reservationMHz = reservationMHz
        self.site = site
        self.hosts = hosts
        self.antiAffinity = antiAffinity
        self.affinity = affinity
    }
}

public enum Strategy: String, Sendable, Codable {
    /// Least loaded host first: even load, room to grow on every host.
    case spread
    /// Fullest host that fits first: few hosts used, the rest free to power off.
    case pack
}

/// The cluster during placement: hosts, where each placed VM is, and the symmetric anti-affinity index.
public struct ClusterState: Sendable {
    public var hosts: [PlacementHost]
    /// VM name → index of its host.
    public var location: [String: Int] = [:]
    /// VM name → VMs that must stay apart from it (both directions).
    public var apart: [String: Set<String>] = [:]
    /// VM name → VMs that must share its host (both directions).
    public var together: [String: Set<String>] = [:]

    public init(hosts: [PlacementHost]) {
        self.hosts = hosts
        for (i, h) in hosts.enumerated() { for vm in h.vms { location[vm] = i } }
    }

    /// Records the affinity and anti-affinity of `vm` in both directions.
    public mutating func noteConstraints(_ vm: PlacementVM) {
        if !vm.antiAffinity.isEmpty {
            apart[vm.name, default: []].formUnion(vm.antiAffinity)
            for other in vm.antiAffinity { apart[other, default: []].insert(vm.name) }
        }
        if !vm.affinity.isEmpty {
            together[vm.name, default: []].formUnion(vm.affinity)
            for other in vm.affinity { together[other, default: []].insert(vm.name) }
        }
    }

    public mutating func commit(_ vm: PlacementVM, to index: Int) {
        hosts[index].add(vm)
        location[vm.name] = index
    }
}
