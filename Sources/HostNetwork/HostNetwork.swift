import AgentAPI
import ClusterModel
import FoundationEssentials
import Glibc

/// A host's links as `ip -json -details link show` reports them, and the flood entries of its tunnels
/// as `bridge -json fdb show` does.
public struct HostLinks: Sendable, Equatable {
    public struct Link: Sendable, Equatable {
        public var name: String
        /// `bridge`, `vxlan`, `vlan`, `veth`, `tun`, ... (nil: a physical device).
        public var kind: String?
        public var master: String?
        public var up: Bool
        public var mtu: Int
        public var alias: String?
        /// vxlan: VNI; vlan: VLAN id.
        public var id: Int?
        /// vxlan: UDP port.
        public var port: Int?
        /// vlan: the device it tags frames on; vxlan: the device it is bound to.
        public var parent: String?
        /// vxlan: the local (source) address.
        public var local: String?
        public init(name: String, kind: String? = nil, master: String? = nil, up: Bool = true, mtu: Int = 1500, alias: String? = nil,
                    id: Int? = nil, port: Int? = nil, parent: String? = nil, local: String? = nil) {
            self.local = local
            self.name = name
            self.kind = kind
            self.master = master
            self.up = up
            self.mtu = mtu
            self.alias = alias
            self.id = id
            self.port = port
            self.parent = parent
        }
    }

    public var links: [Link]
    /// Tunnel → destinations of its all-zero (flood) entries.
    public var flood: [String: [String]]
    public init(links: [Link], flood: [String: [String]] = [:]) {
        self.links = links
        self.flood = flood
    }

    public func link(_ name: String) -> Link? { links.first { $0.name == name } }
    public func ports(of bridge: String) -> [String] { links.filter { $0.master == bridge }.map(\.name).sorted() }

    /// Parses `ip -json -details link show`.
    public static func parseLinks(_ json: Data) throws -> [Link] {
        guard let items = try JSONValue(parsing: json).array else { return [] }
        let byIndex = Dictionary(items.compactMap { i -> (Int, String)? in
            guard let idx = i["ifindex"]?.int, let n = i["ifname"]?.string else { return nil }
            return (idx, n)
        }, uniquingKeysWith: { a, _ in a })
        return items.compactMap { i in
            guard let name = i["ifname"]?.string else { return nil }
            let info = i["linkinfo"]
            let data = info?["info_data"]
            let flags = i["flags"]?.array?.compactMap(\.string) ?? []
            // A VLAN names its device at the top level, a VXLAN tunnel in its data.
            var parent = i["link"]?.string ?? data?["link"]?.string
            if parent == nil, i["link_netnsid"] == nil, let idx = i["link_index"]?.int { parent = byIndex[idx] }
            if info?["info_kind"]?.string == "veth" { parent = nil }
            return Link(name: name, kind: info?["info_kind"]?.string, master: i["master"]?.string, up: flags.contains("UP"),
                        mtu: i["mtu"]?.int ?? 1500, alias: i["ifalias"]?.string, id: data?["id"]?.int,
                        port: data?["port"]?.int, parent: parent, local: data?["local"]?.string)
        }
    }

    /// Parses `bridge -json fdb show`: the all-zero entries with a destination, by device.
    public static func parseFlood(_ json: Data) throws -> [String: [String]] {
        guard let items = try JSONValue(parsing: json).array else { return [:] }
        var out: [String: [String]] = [:]
        for i in items {
            guard i["mac"]?.string == "00:00:00:00:00:00", let dev = i["ifname"]?.string ?? i["dev"]?.string,
                  let dst = i["dst"]?.string else { continue }
            out[dev, default: []].append(dst)
        }
        return out.mapValues { $0.sorted() }
    }
}

/// What the agent runs to make a host carry its networks: a pure plan from the wanted settings and the
/// links the host has, so the host configuration (the VLAN path too, whose kernel support this machine
/// lacks) is tested without a kernel. Every device the agent makes carries the alias `vsphere:NETWORK`,
/// by which it knows what it may change or remove.
public enum NetworkPlan {
    public static let aliasPrefix = "vsphere:"

    public struct Command: Sendable, Equatable, CustomStringConvertible {
        /// `ip` or `bridge`.
        public var program: String
        public var arguments: [String]
        /// The network it serves (nil: removal of one no longer given).
        public var network: String?
        public init(_ program: String, _ arguments: [String], network: String?) {
            self.program = program
            self.arguments = arguments
            self.network = network
        }
        public var description: String { ([program] + arguments).joined(separator: " ") }
    }

    public struct Result: Sendable, Equatable {
        public var commands: [Command]
        /// Networks that cannot be realized, with the reason (nothing is run for them).
        public var errors: [String: String]
    }

    /// The VLAN or VXLAN device under a network's bridge (nil for a plain bridge network).
    public static func tunnel(_ s: NetworkSetting) -> String? {
        switch s.mode {
        case "vxlan": return "vsvxlan\(s.vni ?? 0)"
        case "vlan": return "vsvlan\(s.vlan ?? 0)"
        default: return nil
        }
    }

    public static let defaultVXLANPort = 4789

    /// Why a setting is unusable before looking at the host (names, ranges, addresses). `requireUplink`:
    /// a VLAN network without an uplink is a problem too (false when the host may supply its own).
    public static func problem(_ s: NetworkSetting, requireUplink: Bool = true) -> String? {
        let isName = VMSpec.isInterfaceName
        if !isName(s.bridge) { return "bridge \(s.bridge) is not a Linux interface name" }
        if let u = s.uplink, !isName(u) { return "uplink \(u) is not a Linux interface name" }
        if let m = s.mtu, !(576...9_000).contains(m) { return "mtu \(m) is not between 576 and 9000" }
        switch s.mode {
        case "bridge": return nil
        case "vlan":
            guard let v = s.vlan, (1...4094).contains(v) else { return "a VLAN network needs a VLAN between 1 and 4094" }
            if s.uplink == nil && requireUplink { return "a VLAN network needs an uplink (the manifest's network uplink or the agent's uplink setting)" }
        case "vxlan":
            guard let v = s.vni, (1...16_777_215).contains(v) else { return "a VXLAN network needs a VNI between 1 and 16777215" }
            if let p = s.port, !(1...65_535).contains(p) { return "port \(p) is not a UDP port" }
            for p in s.peers where !isAddress(p) { return "peer \(p) is not an IP address" }
            if let l = s.local, !isAddress(l) { return "local \(l) is not an IP address" }
        default: return "mode \(s.mode) is not bridge, vlan or vxlan"
        }
        return nil
    }

    /// A literal IPv4 or IPv6 address (peers reach `bridge fdb` only as addresses).
    public static func isAddress(_ s: String) -> Bool { canonical(s) != nil }

    /// An address literal as the kernel prints it (`2001:db8:0::1` → `2001:db8::1`); nil if not one.
    public static func canonical(_ s: String) -> String? {
        var v4 = in_addr()
        var v6 = in6_addr()
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        if inet_pton(AF_INET, s, &v4) == 1, inet_ntop(AF_INET, &v4, &buf, socklen_t(buf.count)) != nil { return String(cString: buf) }
        if inet_pton(AF_INET6, s, &v6) == 1, inet_ntop(AF_INET6, &v6, &buf, socklen_t(buf.count)) != nil { return String(cString: buf) }
        return nil
    }

    /// The commands that take the host from `have` to `want`. Peers must be addresses already.
    public static func plan(want: [NetworkSetting], have: HostLinks) -> Result {
        var commands: [Command] = []
        var errors: [String: String] = [:]
        var keep: Set<String> = []
        func ip(_ args: String..., for net: String?) { commands.append(Command("ip", args, network: net)) }

        for s in want {
            if let p = problem(s) {
                errors[s.name] = p
                continue
            }
            let alias = aliasPrefix + s.name
            let bridge = have.link(s.bridge)
            // A wanted network's own devices stay, even while it cannot be realized here.
            keep.insert(s.bridge)
            if let t = tunnel(s) { keep.insert(t) }
            if s.mode == "bridge" {
                // The operator's bridge: used as it is (only brought up when down).
                if bridge == nil { errors[s.name] = "bridge \(s.bridge) does not exist on this host" }
                else if bridge?.kind != "bridge" { errors[s.name] = "\(s.bridge) is not a bridge" }
                else if bridge?.up == false { ip("link", "set", "dev", s.bridge, "up", for: s.name) }
                continue
            }
            let t = tunnel(s)!
            if s.mode == "vlan" && s.uplink == nil {
                errors[s.name] = "a VLAN network needs an uplink (the manifest's network uplink or the agent's uplink setting)"
                continue
            }
            if let u = s.uplink, have.link(u) == nil {
                errors[s.name] = "uplink \(u) does not exist on this host"
                continue
            }
            if let b = bridge, b.kind != "bridge" {
                errors[s.name] = "\(s.bridge) exists and is not a bridge"
                continue
            }
            // A tunnel under someone else's bridge would join the segment to whatever that bridge
            // carries (the host's LAN, libvirt's NAT network): only bridges the agent made are used.
            if let b = bridge, b.alias != alias {
                errors[s.name] = "bridge \(s.bridge) exists and was not made for network \(s.name)"
                continue
            }
            if let other = have.link(t), other.alias != alias {
                errors[s.name] = "\(t) exists and was not made for network \(s.name)"
                continue
            }
            let mtu = s.mtu ?? (s.mode == "vxlan" ? 1450 : nil)

            if bridge == nil {
                ip("link", "add", "name", s.bridge, "type", "bridge", for: s.name)
                ip("link", "set", "dev", s.bridge, "alias", alias, for: s.name)
            }
            // The tunnel: made again when what it is differs from what is wanted.
            var existing = have.link(t)
            if let e = existing {
                let port = s.port ?? defaultVXLANPort
                let same = s.mode == "vxlan"
                    ? e.kind == "vxlan" && e.id == s.vni && (e.port ?? port) == port && e.parent == s.uplink && e.local == s.local
                    : e.kind == "vlan" && e.id == s.vlan && e.parent == s.uplink
                if !same {
                    ip("link", "del", "dev", t, for: s.name)
                    existing = nil
                }
            }
            if existing == nil {
                if s.mode == "vxlan" {
                    var args = ["link", "add", "name", t, "type", "vxlan", "id", String(s.vni!), "dstport", String(s.port ?? defaultVXLANPort)]
                    if let l = s.local { args += ["local", l] }
                    if let u = s.uplink { args += ["dev", u] }
                    commands.append(Command("ip", args, network: s.name))
                } else {
                    ip("link", "add", "link", s.uplink!, "name", t, "type", "vlan", "id", String(s.vlan!), for: s.name)
                }
                ip("link", "set", "dev", t, "alias", alias, for: s.name)
            }
            if let m = mtu {
                if existing == nil || existing?.mtu != m { ip("link", "set", "dev", t, "mtu", String(m), for: s.name) }
                if bridge == nil || bridge?.mtu != m { ip("link", "set", "dev", s.bridge, "mtu", String(m), for: s.name) }
            }
            if existing == nil || existing?.master != s.bridge { ip("link", "set", "dev", t, "master", s.bridge, for: s.name) }
            if existing == nil || existing?.up == false { ip("link", "set", "dev", t, "up", for: s.name) }
            if bridge == nil || bridge?.up == false { ip("link", "set", "dev", s.bridge, "up", for: s.name) }

            if s.mode == "vxlan" {
                // Head-end replication: one flood entry per peer, exactly.
                let haveFlood = Set(existing == nil ? [] : have.flood[t] ?? [])
                let wantFlood = Set(s.peers)
                for p in wantFlood.subtracting(haveFlood).sorted() {
                    commands.append(Command("bridge", ["fdb", "append", "00:00:00:00:00:00", "dev", t, "dst", p], network: s.name))
                }
                for p in haveFlood.subtracting(wantFlood).sorted() {
                    commands.append(Command("bridge", ["fdb", "del", "00:00:00:00:00:00", "dev", t, "dst", p], network: s.name))
                }
            }
        }

        // What the agent made for networks no longer given: tunnels go; bridges go once nothing but
        // the agent's own tunnels is plugged into them (a VM's NIC keeps its bridge).
        let owned = have.links.filter { ($0.alias ?? "").hasPrefix(aliasPrefix) && !keep.contains($0.name) }
        let goingTunnels = Set(owned.filter { $0.kind != "bridge" }.map(\.name))
        for l in owned where l.kind != "bridge" { ip("link", "del", "dev", l.name, for: nil) }
        for b in owned where b.kind == "bridge" {
            if have.ports(of: b.name).allSatisfy({ goingTunnels.contains($0) }) { ip("link", "del", "dev", b.name, for: nil) }
        }
        return Result(commands: commands, errors: errors)
    }

    /// The status of each wanted network on a host (read after the plan ran).
    public static func status(want: [NetworkSetting], have: HostLinks, errors: [String: String]) -> [NetworkStatus] {
        want.map { s in
            let t = tunnel(s)
            let b = have.link(s.bridge)
            let tl = t.flatMap { have.link($0) }
            var error = errors[s.name]
            if error == nil {
                if b == nil { error = "bridge \(s.bridge) is missing" }
                else if let t, tl == nil { error = "\(t) is missing" }
                else if let t, tl?.master != s.bridge { error = "\(t) is not in bridge \(s.bridge)" }
            }
            let up = error == nil && b?.up == true && (t == nil || tl?.up == true)
            return NetworkStatus(name: s.name, bridge: s.bridge, mode: s.mode, up: up, mtu: b?.mtu, tunnel: t,
                                 ports: have.ports(of: s.bridge), peers: t.flatMap { have.flood[$0] } ?? [], error: error)
        }
    }
}
