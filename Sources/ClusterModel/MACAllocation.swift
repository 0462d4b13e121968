/// Cluster-wide MAC addresses: every NIC without one gets an address no other NIC of the cluster has,
/// and keeps it (a VM re-applied without MACs inherits the ones it was given, NIC by NIC).
public enum MACAllocation {
    /// QEMU's OUI, as libvirt uses; the low 24 bits are drawn at random and checked against every
    /// address in use, so two hosts never pick the same one (libvirt alone draws per host, unchecked).
    public static let prefix: [UInt8] = [0x52, 0x54, 0x00]

    /// Fills the missing MACs of `incoming` VMs. `existing` is the desired state they merge into: a VM of
    /// the same name passes its NICs' addresses on by index; every address of `existing` and every address
    /// `incoming` gives explicitly stays taken.
    public static func assign<G: RandomNumberGenerator>(_ incoming: inout [VMSpec], existing: [VMSpec], using rng: inout G) {
        let replaced = Set(incoming.map(\.name))
        var used: Set<String> = []
        for vm in existing where !replaced.contains(vm.name) {
            for n in vm.nics { if let m = n.mac { used.insert(m.lowercased()) } }
        }
        for vm in incoming {
            for n in vm.nics { if let m = n.mac { used.insert(m.lowercased()) } }
        }
        let before = Dictionary(existing.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        // First every NIC that inherits its address, so that no fresh draw can take one of those.
        for v in incoming.indices {
            for i in incoming[v].nics.indices where incoming[v].nics[i].mac == nil {
                if let old = before[incoming[v].name], i < old.nics.count, let m = old.nics[i].mac?.lowercased(), !used.contains(m) {
                    incoming[v].nics[i].mac = m
                    used.insert(m)
                }
            }
        }
        for v in incoming.indices {
            for i in incoming[v].nics.indices where incoming[v].nics[i].mac == nil {
                var m: String
                repeat { m = format(prefix + [UInt8.random(in: 0...255, using: &rng), UInt8.random(in: 0...255, using: &rng), UInt8.random(in: 0...255, using: &rng)]) }
                while used.contains(m)
                incoming[v].nics[i].mac = m
                used.insert(m)
            }
        }
    }

    public static func assign(_ incoming: inout [VMSpec], existing: [VMSpec]) {
        var rng = SystemRandomNumberGenerator()
        assign(&incoming, existing: existing, using: &rng)
    }

    static func format(_ bytes: [UInt8]) -> String {
        bytes.map { b in
            let h = String(b, radix: 16)
            return h.count == 1 ? "0" + h : h
        }.joined(separator: ":")
    }
}
