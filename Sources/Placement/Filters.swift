/// What filters need to know about the VM being placed, worked out once per VM (not once per host).
public struct VMContext: Sendable {
    public let vm: PlacementVM
    /// Hosts that run a VM this one must stay apart from, with that VM's name.
    public let apartHosts: [Int: String]
    /// Where affinity partners already run: host index → a partner on it.
    public let partnerHosts: [Int: String]
    public let hostNames: [String]

    public init(_ vm: PlacementVM, state: ClusterState) {
        self.vm = vm
        var apart: [Int: String] = [:]
        for other in state.apart[vm.name] ?? [] { if let at = state.location[other] { apart[at] = other } }
        var partners: [Int: String] = [:]
        for other in state.together[vm.name] ?? [] { if let at = state.location[other] { partners[at] = other } }
        apartHosts = apart
        partnerHosts = partners
        hostNames = partners.isEmpty ? [] : state.hosts.map(\.name)
    }
}

/// One feasibility rule: `admits` is the fast check run for every host; `reason` says why not, for
/// the hosts it turned away, when a VM could not be placed.
public protocol PlacementFilter: Sendable {
    var name: String { get }
    func admits(_ c: VMContext, host: PlacementHost, index: Int) -> Bool
    func reason(_ c: VMContext, host: PlacementHost, index: Int) -> String
    /// Whether the filter can turn anything away for this VM at all (skipped for the VM when not).
    func applies(to c: VMContext) -> Bool
}

extension PlacementFilter {
    public func applies(to c: VMContext) -> Bool { true }
}

/// Only connected hosts take new VMs (not in maintenance, powered off or unreachable).
public struct HostStateFilter: PlacementFilter {
    public let name = "hostState"
    public init() {}
    public func admits(_ c: VMContext, host: PlacementHost, index: Int) -> Bool { host.state == .connected }
    public func reason(_ c: VMContext, host: PlacementHost, index: Int) -> String { "host is \(host.state.rawValue)" }
}

/// vCPUs and memory net of what is committed, and CPU reservations net of what is reserved.
public struct CapacityFilter: PlacementFilter {
    public let name = "capacity"
    public init() {}
    public func admits(_ c: VMContext, host: PlacementHost, index: Int) -> Bool {
        c.vm.memoryMiB <= host.freeMemoryMiB && c.vm.cpus <= host.freeVCPUs && c.vm.reservationMHz <= host.freeMHz
    }
    public func reason(_ c: VMContext, host: PlacementHost, index: Int) -> String {
        if c.vm.memoryMiB > host.freeMemoryMiB { return "memory: needs \(c.vm.memoryMiB) MiB, \(host.freeMemoryMiB) MiB free" }
        if c.vm.cpus > host.freeVCPUs { return "cpu: needs \(c.vm.cpus) vCPUs, \(host.freeVCPUs) free" }
        return "cpu reservation: needs \(c.vm.reservationMHz) MHz, \(host.freeMHz) MHz unreserved"
    }
}

/// The VM's volumes fit in the storage pools of the host (where the host reports its pools).
public struct StorageFilter: PlacementFilter {
    public let name = "storage"
    public init() {}
    public func applies(to c: VMContext) -> Bool { !c.vm.storageGiB.isEmpty }
    public func admits(_ c: VMContext, host: PlacementHost, index: Int) -> Bool {
        guard let free = host.storageFreeGiB else { return true }
        return c.vm.storageGiB.allSatisfy { pool, gib in free[pool].map { $0 >= gib } ?? false }
    }
    public func reason(_ c: VMContext, host: PlacementHost, index: Int) -> String {
        let free = host.storageFreeGiB ?? [:]
        for (pool, gib) in c.vm.storageGiB.sorted(by: { $0.key < $1.key }) {
            guard let f = free[pool] else { return "storage: pool \(pool) is not usable on this host" }
            if f < gib { return "storage: pool \(pool) needs \(gib) GiB, \(max(0, f)) GiB free" }
        }
        return "storage"
    }
}

/// Every network the VM's NICs plug into can be built on the host (as the host last reported).
public struct NetworkFilter: PlacementFilter {
    public let name = "network"
    public init() {}
    public func applies(to c: VMContext) -> Bool { !c.vm.networks.isEmpty }
    public func admits(_ c: VMContext, host: PlacementHost, index: Int) -> Bool {
        host.unusableNetworks.isEmpty || c.vm.networks.allSatisfy { host.unusableNetworks[$0] == nil }
    }
    public func reason(_ c: VMContext, host: PlacementHost, index: Int) -> String {
        let n = c.vm.networks.sorted().first { host.unusableNetworks[$0] != nil } ?? "?"
        return "cannot build network \(n): \(host.unusableNetworks[n] ?? "")"
    }
}

/// The VM's site, when it names one.
public struct SiteFilter: PlacementFilter {
    public let name = "site"
    public init() {}
    public func admits(_ c: VMContext, host: PlacementHost, index: Int) -> Bool { c.vm.site == nil || host.site == c.vm.site }
    public func applies(to c: VMContext) -> Bool { c.vm.site != nil }
    public func reason(_ c: VMContext, host: PlacementHost, index: Int) -> String {
        "host is in site \(host.site ?? "none"), VM wants \(c.vm.site ?? "")"
    }
}

/// The VM's host list, when it names one.
public struct HostListFilter: PlacementFilter {
    public let name = "hosts"
    public init() {}
    public func admits(_ c: VMContext, host: PlacementHost, index: Int) -> Bool { c.vm.hosts?.contains(host.name) ?? true }
    public func applies(to c: VMContext) -> Bool { c.vm.hosts != nil }
    public func reason(_ c: VMContext, host: PlacementHost, index: Int) -> String { "not one of the VM's hosts" }
}

/// Hard anti-affinity, in both directions.
public struct AntiAffinityFilter: PlacementFilter {
    public let name = "antiAffinity"
    public init() {}
    public func admits(_ c: VMContext, host: PlacementHost, index: Int) -> Bool { c.apartHosts[index] == nil }
    public func applies(to c: VMContext) -> Bool { !c.apartHosts.isEmpty }
    public func reason(_ c: VMContext, host: PlacementHost, index: Int) -> String {
        "runs \(c.apartHosts[index] ?? "?"), which must stay apart"
    }
}

/// Hard affinity, in both directions: once a partner runs somewhere, only that host.
public struct AffinityFilter: PlacementFilter {
    public let name = "affinity"
    public init() {}
    public func admits(_ c: VMContext, host: PlacementHost, index: Int) -> Bool {
        c.partnerHosts.isEmpty || (c.partnerHosts.count == 1 && c.partnerHosts[index] != nil)
    }
    public func applies(to c: VMContext) -> Bool { !c.partnerHosts.isEmpty }
    public func reason(_ c: VMContext, host: PlacementHost, index: Int) -> String {
        let elsewhere = c.partnerHosts.filter { $0.key != index }.sorted { $0.key < $1.key }
        return elsewhere.map { "\($0.value) runs on \(c.hostNames[$0.key])" }.joined(separator: ", ")
    }
}

public enum Filters {
    /// The default chain, cheapest and most selective first.
    public static let all: [any PlacementFilter] = [
        HostStateFilter(), CapacityFilter(), StorageFilter(), NetworkFilter(), SiteFilter(), HostListFilter(), AntiAffinityFilter(), AffinityFilter(),
    ]
}
