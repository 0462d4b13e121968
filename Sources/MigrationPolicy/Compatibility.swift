import ClusterModel
import Placement

/// Whether a running VM may move to a destination host: checked before anything starts. Pure: the
/// controller gathers the facts (placement snapshot, both hosts' inventories, the VM's live definition).
public enum Compatibility {
    public struct Problem: Sendable, Equatable, Codable, CustomStringConvertible {
        /// `host`, `cpu`, `capacity`, `site`, `hosts`, `antiAffinity`, `affinity`, `network`, `storage`.
        public var check: String
        public var message: String
        public init(_ check: String, _ message: String) {
            self.check = check
            self.message = message
        }
        public var description: String { "\(check): \(message)" }
    }

    /// What the destination offers, from its agent's inventory.
    public struct HostFacts: Sendable, Equatable {
        /// CPU models QEMU can give guests there (libvirt domain capabilities, usable ones).
        public var cpuModels: Set<String>
        /// The host CPU's own model (for host-model and host-passthrough guests).
        public var hostCPUModel: String?
        /// Bridges and libvirt networks guests can plug into.
        public var networks: Set<String>
        public var accelerator: String

        public init(cpuModels: Set<String>, hostCPUModel: String?, networks: Set<String>, accelerator: String) {
            self.cpuModels = cpuModels
            self.hostCPUModel = hostCPUModel
            self.networks = networks
            self.accelerator = accelerator
        }
    }

    /// Every reason the VM (running on `source`) cannot move to `destination` now; empty when it can.
    /// `spec` is the VM's live definition (CPU model resolved, NICs resolved into bridges).
    public static func check(
        vm: PlacementVM, spec: VMSpec, state: ClusterState, source: String, destination: String,
        sourceFacts: HostFacts?, destinationFacts: HostFacts?
    ) -> [Problem] {
        var out: [Problem] = []
        if source == destination { return [Problem("host", "\(vm.name) already runs on \(destination)")] }
        guard let d = state.hosts.firstIndex(where: { $0.name == destination }) else {
            return [Problem("host", "no host \(destination)")]
        }
        // Placement's own filters, on the destination, with the VM counted on the source only.
        var view = state
        if let s = view.hosts.firstIndex(where: { $0.name == source }) { view.hosts[s].remove(vm); view.location[vm.name] = nil }
        let context = VMContext(vm, state: view)
        for f in Filters.all where f.applies(to: context) {
            if !f.admits(context, host: view.hosts[d], index: d) {
                out.append(Problem(f.name, f.reason(context, host: view.hosts[d], index: d)))
            }
        }
        guard let dest = destinationFacts else {
            out.append(Problem("host", "\(destination) has not reported its inventory"))
            return out
        }
        if let src = sourceFacts, src.accelerator != dest.accelerator {
            out.append(Problem("cpu", "\(source) runs guests with \(src.accelerator), \(destination) with \(dest.accelerator)"))
        }
        let model = spec.cpuModel ?? "qemu64"
        if model == "host-passthrough" || model == "host-model" {
            if sourceFacts?.hostCPUModel == nil || sourceFacts?.hostCPUModel != dest.hostCPUModel {
                out.append(Problem(
                    "cpu", "\(model) guest needs the same host CPU: \(sourceFacts?.hostCPUModel ?? "unknown") on \(source), \(dest.hostCPUModel ?? "unknown") on \(destination)"))
            }
        } else if !dest.cpuModels.isEmpty && !dest.cpuModels.contains(model) {
            out.append(Problem("cpu", "CPU model \(model) is not usable on \(destination)"))
        }
        for (i, nic) in spec.nics.enumerated() {
            guard let bridge = nic.bridge ?? nic.network else { continue }
            if !dest.networks.contains(bridge) {
                out.append(Problem("network", "nics[\(i)]: \(bridge) does not exist on \(destination)"))
            }
        }
        return out
    }
}
