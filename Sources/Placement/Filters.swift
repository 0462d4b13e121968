/// One feasibility rule. Returns why `host` cannot take `vm`, or nil when it can.
public protocol PlacementFilter: Sendable {
    var name: String { get }
    func reject(_ vm: PlacementVM, host: PlacementHost, index: Int, state: ClusterState) -> String?
}

/// Only connected hosts take new VMs (not in maintenance, powered off or unreachable).
public struct HostStateFilter: PlacementFilter {
    public let name = "hostState"
    public init() {}
    public func reject(_ vm: PlacementVM, host: PlacementHost, index: Int, state: ClusterState) -> String? {
        host.state == .connected ? nil : "host is \(host.state.rawValue)"
    }
}

/// vCPUs and memory net of what is committed, and CPU reservations net of what is reserved.
public struct CapacityFilter: PlacementFilter {
    public let name = "capacity"
    public init() {}
    public func reject(_ vm: PlacementVM, host: PlacementHost, index: Int, state: ClusterState) -> String? {
        if vm.memoryMiB > host.freeMemoryMiB { return "memory: needs \(vm.memoryMiB) MiB, \(host.freeMemoryMiB) MiB free" }
        if vm.cpus > host.freeVCPUs { return "cpu: needs \(vm.cpus) vCPUs, \(host.freeVCPUs) free" }
        if vm.reservationMHz > host.freeMHz { return "cpu reservation: needs \(vm.reservationMHz) MHz, \(host.freeMHz) MHz unreserved" }
        return nil
    }
}

/// The VM's site, when it names one.
public struct SiteFilter: PlacementFilter {
    public let name = "site"
    public init() {}
    public func reject(_ vm: PlacementVM, host: PlacementHost, index: Int, state: ClusterState) -> String? {
        guard let site = vm.site, host.site != site else { return nil }
        return "host is in site \(host.site ?? "none"), VM wants \(site)"
    }
}

/// The VM's host list, when it names one.
public struct HostListFilter: PlacementFilter {
    public let name = "hosts"
    public init() {}
    public func reject(_ vm: PlacementVM, host: PlacementHost, index: Int, state: ClusterState) -> String? {
        guard let allowed = vm.hosts, !allowed.contains(host.name) else { return nil }
        return "not one of the VM's hosts"
    }
}

/// Hard anti-affinity, in both directions.
public struct AntiAffinityFilter: PlacementFilter {
    public let name = "antiAffinity"
    public init() {}
    public func reject(_ vm: PlacementVM, host: PlacementHost, index: Int, state: ClusterState) -> String? {
        guard let apart = state.apart[vm.name] else { return nil }
        for other in apart where state.location[other] == index { return "runs \(other), which must stay apart" }
        return nil
    }
}

/// Hard affinity, in both directions: once a partner runs somewhere, only that host.
public struct AffinityFilter: PlacementFilter {
    public let name = "affinity"
    public init() {}
    public func reject(_ vm: PlacementVM, host: PlacementHost, index: Int, state: ClusterState) -> String? {
        guard let partners = state.together[vm.name] else { return nil }
        for other in partners {
            if let at = state.location[other], at != index { return "\(other) runs on \(state.hosts[at].name)" }
        }
        return nil
    }
}

public enum Filters {
    /// The default chain, cheapest and most selective first.
    public static let all: [any PlacementFilter] = [
        HostStateFilter(), CapacityFilter(), SiteFilter(), HostListFilter(), AntiAffinityFilter(), AffinityFilter(),
    ]
}
