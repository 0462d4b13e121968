/// Compliance rules over a desired state: which VMs break which rule, and why. Pure; the controller
/// checks its desired state with it (`vsphere-ctl compliance`), the CLI a manifest file offline.
public enum Compliance {
    public struct Violation: Codable, Sendable, Equatable {
        public var vm: String
        public var rule: String
        public var message: String
        public init(vm: String, rule: String, message: String) {
            self.vm = vm
            self.rule = rule
            self.message = message
        }
    }

    public struct Report: Codable, Sendable, Equatable {
        /// The rules that were checked, by name.
        public var rules: [String]
        public var vms: Int
        public var violations: [Violation]
        public var compliant: Bool { violations.isEmpty }
        public init(rules: [String], vms: Int, violations: [Violation]) {
            self.rules = rules
            self.vms = vms
            self.violations = violations
        }
    }

    public static func evaluate(_ m: ClusterManifest) -> Report {
        let r = m.settings?.compliance ?? .init()
        var rules: [String] = []
        if r.requireResourcePool == true { rules.append("requireResourcePool") }
        if r.requireMemoryLimit == true { rules.append("requireMemoryLimit") }
        if r.requireCPULimit == true { rules.append("requireCPULimit") }
        if r.maxVCPUs != nil { rules.append("maxVCPUs") }
        if r.allowedNetworks != nil { rules.append("allowedNetworks") }
        if r.requireSite == true { rules.append("requireSite") }
        var out: [Violation] = []
        let vms = (m.vms ?? []).sorted { $0.name < $1.name }
        let pools = m.resourcePools ?? []
        for vm in vms {
            if r.requireResourcePool == true && vm.resourcePool == nil {
                out.append(.init(vm: vm.name, rule: "requireResourcePool", message: "in no resource pool"))
            }
            if r.requireMemoryLimit == true && vm.resources?.memory?.limitMiB == nil && !poolChain(vm.resourcePool, pools).contains(where: { $0.memory?.limitMiB != nil }) {
                out.append(.init(vm: vm.name, rule: "requireMemoryLimit", message: "no memory limit (its own or a resource pool's)"))
            }
            if r.requireCPULimit == true && vm.resources?.cpu?.limitMHz == nil && !poolChain(vm.resourcePool, pools).contains(where: { $0.cpu?.limitMHz != nil }) {
                out.append(.init(vm: vm.name, rule: "requireCPULimit", message: "no CPU limit (its own or a resource pool's)"))
            }
            if let max = r.maxVCPUs, vm.cpus > max {
                out.append(.init(vm: vm.name, rule: "maxVCPUs", message: "\(vm.cpus) vCPUs, more than \(max)"))
            }
            if let allowed = r.allowedNetworks {
                for (i, nic) in vm.nics.enumerated() {
                    let net = nic.network ?? nic.bridge ?? "?"
                    if !allowed.contains(net) { out.append(.init(vm: vm.name, rule: "allowedNetworks", message: "nics[\(i)] on \(net), not an allowed network")) }
                }
            }
            if r.requireSite == true && vm.placement?.site == nil {
                out.append(.init(vm: vm.name, rule: "requireSite", message: "not pinned to a site"))
            }
        }
        return Report(rules: rules, vms: vms.count, violations: out)
    }

    /// The VM's pool and its ancestors.
    static func poolChain(_ pool: String?, _ pools: [ClusterManifest.ResourcePool]) -> [ClusterManifest.ResourcePool] {
        let byName = Dictionary(pools.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var out: [ClusterManifest.ResourcePool] = []
        var cur = pool
        while let c = cur, let p = byName[c], !out.contains(p) {
            out.append(p)
            cur = p.parent
        }
        return out
    }
}
