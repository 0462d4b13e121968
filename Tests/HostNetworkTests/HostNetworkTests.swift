import AgentAPI
import Foundation
import HostNetwork
import TestSupport
import Testing

/// The distributed switch's host configuration, checked without a kernel: the commands planned from
/// settings and links, run against a small model of the kernel's links (what `ip`/`bridge` would do).
@Suite struct HostNetworkPlanTests {
    /// A model of the commands the plan uses, applied to a link table.
    static func run(_ commands: [NetworkPlan.Command], on have: HostLinks) throws -> HostLinks {
        var h = have
        func index(_ n: String) throws -> Int {
            guard let i = h.links.firstIndex(where: { $0.name == n }) else { throw Failure("no link \(n)") }
            return i
        }
        for c in commands {
            let a = c.arguments
            if c.program == "bridge" {
                let dev = a[4], dst = a[6]
                if a[1] == "append" {
                    if h.flood[dev]?.contains(dst) == true { throw Failure("duplicate flood entry \(dst)") }
                    h.flood[dev, default: []].append(dst)
                } else {
                    guard h.flood[dev]?.contains(dst) == true else { throw Failure("no flood entry \(dst)") }
                    h.flood[dev]?.removeAll { $0 == dst }
                }
                h.flood[dev]?.sort()
                continue
            }
            switch (a[0], a[1]) {
            case ("link", "add"):
                if a[2] == "link" {
                    // link add link UPLINK name T type vlan id V
                    _ = try index(a[3])
                    guard h.link(a[5]) == nil else { throw Failure("\(a[5]) exists") }
                    h.links.append(.init(name: a[5], kind: "vlan", up: false, id: Int(a[9]), parent: a[3]))
                } else {
                    guard h.link(a[3]) == nil else { throw Failure("\(a[3]) exists") }
                    if a[5] == "bridge" {
                        h.links.append(.init(name: a[3], kind: "bridge", up: false))
                    } else {
                        let dev = a.firstIndex(of: "dev").map { a[$0 + 1] }
                        h.links.append(.init(name: a[3], kind: "vxlan", up: false, id: Int(a[7]), port: Int(a[9]), parent: dev))
                    }
                }
            case ("link", "del"):
                let i = try index(a[3])
                let name = a[3]
                h.links.remove(at: i)
                h.flood[name] = nil
                for j in h.links.indices where h.links[j].master == name { h.links[j].master = nil }
            case ("link", "set"):
                let i = try index(a[3])
                switch a[4] {
                case "alias": h.links[i].alias = a[5]
                case "mtu": h.links[i].mtu = Int(a[5])!
                case "master":
                    guard h.link(a[5])?.kind == "bridge" else { throw Failure("\(a[5]) is no bridge") }
                    h.links[i].master = a[5]
                case "up": h.links[i].up = true
                default: throw Failure("unknown \(c)")
                }
            default: throw Failure("unknown \(c)")
            }
        }
        return h
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    static let base = HostLinks(links: [
        .init(name: "lo", kind: nil), .init(name: "eth0", kind: "veth", master: "br0"), .init(name: "br0", kind: "bridge"),
    ])

    @Test func vxlanFromNothing() throws {
        let s = NetworkSetting(name: "prod", bridge: "vsx1001", mode: "vxlan", vni: 1001, peers: ["10.250.1.2", "10.250.2.3"])
        let plan = NetworkPlan.plan(want: [s], have: Self.base)
        #expect(plan.errors.isEmpty)
        let text = plan.commands.map(\.description)
        #expect(text.contains("ip link add name vsx1001 type bridge"))
        #expect(text.contains("ip link add name vsvxlan1001 type vxlan id 1001 dstport 4789"))
        #expect(text.contains("bridge fdb append 00:00:00:00:00:00 dev vsvxlan1001 dst 10.250.1.2"))
        #expect(text.contains("bridge fdb append 00:00:00:00:00:00 dev vsvxlan1001 dst 10.250.2.3"))
        #expect(text.contains("ip link set dev vsvxlan1001 mtu 1450"), "VXLAN's 50 bytes below a 1500-byte uplink")
        let after = try Self.run(plan.commands, on: Self.base)
        #expect(after.link("vsvxlan1001")?.master == "vsx1001" && after.link("vsvxlan1001")?.up == true)
        #expect(after.link("vsx1001")?.alias == "vsphere:prod")
        #expect(NetworkPlan.plan(want: [s], have: after).commands.isEmpty, "nothing to do the second time")
        let st = NetworkPlan.status(want: [s], have: after, errors: [:])
        #expect(st[0].up && st[0].peers == ["10.250.1.2", "10.250.2.3"] && st[0].tunnel == "vsvxlan1001" && st[0].mtu == 1450)
    }

    /// The VLAN path this kernel cannot run (no 802.1q): a VLAN device of the uplink under a bridge.
    @Test func vlanOnTheUplink() throws {
        let s = NetworkSetting(name: "prod", bridge: "vsv100", mode: "vlan", uplink: "eth0", vlan: 100)
        let plan = NetworkPlan.plan(want: [s], have: Self.base)
        #expect(plan.errors.isEmpty)
        #expect(plan.commands.map(\.description) == [
            "ip link add name vsv100 type bridge",
            "ip link set dev vsv100 alias vsphere:prod",
            "ip link add link eth0 name vsvlan100 type vlan id 100",
            "ip link set dev vsvlan100 alias vsphere:prod",
            "ip link set dev vsvlan100 master vsv100",
            "ip link set dev vsvlan100 up",
            "ip link set dev vsv100 up",
        ])
        let after = try Self.run(plan.commands, on: Self.base)
        #expect(NetworkPlan.plan(want: [s], have: after).commands.isEmpty)
        // A changed VLAN id makes the device again; the bridge (and the NICs on it) stay.
        var moved = s
        moved.vlan = 200
        moved.bridge = "vsv100"
        let again = NetworkPlan.plan(want: [moved], have: after).commands.map(\.description)
        #expect(again.first == "ip link add link eth0 name vsvlan200 type vlan id 200")
        #expect(again.contains("ip link del dev vsvlan100") && !again.contains("ip link del dev vsv100"))
        // No uplink, or an uplink the host lacks: an error, nothing run.
        var noUplink = s
        noUplink.uplink = nil
        #expect(NetworkPlan.plan(want: [noUplink], have: Self.base).errors["prod"]?.contains("uplink") == true)
        var missing = s
        missing.uplink = "bond0"
        let r = NetworkPlan.plan(want: [missing], have: Self.base)
        #expect(r.commands.isEmpty && r.errors["prod"] == "uplink bond0 does not exist on this host")
    }

    @Test func peersFollowTheCluster() throws {
        var s = NetworkSetting(name: "prod", bridge: "vsx7", mode: "vxlan", vni: 7, peers: ["10.0.0.2", "10.0.0.3"])
        let first = try Self.run(NetworkPlan.plan(want: [s], have: Self.base).commands, on: Self.base)
        s.peers = ["10.0.0.3", "10.0.0.4"]
        let plan = NetworkPlan.plan(want: [s], have: first).commands.map(\.description)
        #expect(plan == [
            "bridge fdb append 00:00:00:00:00:00 dev vsvxlan7 dst 10.0.0.4",
            "bridge fdb del 00:00:00:00:00:00 dev vsvxlan7 dst 10.0.0.2",
        ])
    }

    @Test func plainBridgeIsTheOperators() throws {
        let s = NetworkSetting(name: "lan", bridge: "br0", mode: "bridge")
        #expect(NetworkPlan.plan(want: [s], have: Self.base).commands.isEmpty)
        let missing = NetworkSetting(name: "lan", bridge: "br9", mode: "bridge")
        let r = NetworkPlan.plan(want: [missing], have: Self.base)
        #expect(r.commands.isEmpty && r.errors["lan"] == "bridge br9 does not exist on this host")
        #expect(NetworkPlan.status(want: [missing], have: Self.base, errors: r.errors)[0].up == false)
        // An existing non-bridge of that name is never taken over.
        let clash = NetworkSetting(name: "x", bridge: "eth0", mode: "vxlan", vni: 5)
        #expect(NetworkPlan.plan(want: [clash], have: Self.base).errors["x"] == "eth0 exists and is not a bridge")
    }

    /// Devices of networks no longer given go; a bridge holding a VM's tap stays (its tunnel goes).
    @Test func removalSparesBridgesInUse() throws {
        let a = NetworkSetting(name: "a", bridge: "vsx1", mode: "vxlan", vni: 1, peers: ["10.0.0.2"])
        let b = NetworkSetting(name: "b", bridge: "vsx2", mode: "vxlan", vni: 2, peers: ["10.0.0.2"])
        var h = try Self.run(NetworkPlan.plan(want: [a, b], have: Self.base).commands, on: Self.base)
        h.links.append(.init(name: "vnet0", kind: "tun", master: "vsx2"))
        let plan = NetworkPlan.plan(want: [], have: h).commands.map(\.description)
        #expect(Set(plan) == ["ip link del dev vsvxlan1", "ip link del dev vsvxlan2", "ip link del dev vsx1"])
        let after = try Self.run(NetworkPlan.plan(want: [], have: h).commands, on: h)
        #expect(after.link("vsx2") != nil && after.link("br0") != nil && after.link("eth0") != nil, "unowned links are never touched")
    }

    /// A VXLAN tunnel bound to the host's own endpoint; an operator's bridge is never put under one.
    @Test func localEndpointAndNoBridgeTakeover() throws {
        let s = NetworkSetting(name: "prod", bridge: "vsx5", mode: "vxlan", vni: 5, peers: ["10.0.0.2"], local: "10.0.0.1")
        let plan = NetworkPlan.plan(want: [s], have: Self.base)
        #expect(plan.commands.map(\.description).contains("ip link add name vsvxlan5 type vxlan id 5 dstport 4789 local 10.0.0.1"))
        var after = try Self.run(plan.commands, on: Self.base)
        for i in after.links.indices where after.links[i].name == "vsvxlan5" { after.links[i].local = "10.0.0.1" }
        #expect(NetworkPlan.plan(want: [s], have: after).commands.isEmpty)
        var moved = s
        moved.local = "10.0.0.9"
        #expect(NetworkPlan.plan(want: [moved], have: after).commands.first?.description == "ip link del dev vsvxlan5", "a new endpoint makes the tunnel again")
        let takeover = NetworkSetting(name: "prod", bridge: "br0", mode: "vxlan", vni: 5)
        let r = NetworkPlan.plan(want: [takeover], have: Self.base)
        #expect(r.commands.isEmpty && r.errors["prod"] == "bridge br0 exists and was not made for network prod")
        #expect(NetworkPlan.canonical("2001:db8:0::1") == "2001:db8::1" && NetworkPlan.canonical("host1") == nil)
    }

    /// A wanted network that cannot be realized keeps its devices (no teardown on a transient error).
    @Test func wantedButBrokenKeepsItsDevices() throws {
        let s = NetworkSetting(name: "v", bridge: "vsv7", mode: "vlan", uplink: "eth0", vlan: 7)
        let h = try Self.run(NetworkPlan.plan(want: [s], have: Self.base).commands, on: Self.base)
        var broken = s
        broken.uplink = "bond9"
        let plan = NetworkPlan.plan(want: [broken], have: h)
        #expect(plan.commands.isEmpty && plan.errors["v"] == "uplink bond9 does not exist on this host")
    }

    /// A tunnel name taken by something the agent did not make is an error, not a takeover.
    @Test func foreignTunnelIsNotTaken() {
        var h = Self.base
        h.links.append(.init(name: "vsvxlan9", kind: "vxlan", id: 9, port: 4789))
        let s = NetworkSetting(name: "n", bridge: "vsx9", mode: "vxlan", vni: 9)
        #expect(NetworkPlan.plan(want: [s], have: h).errors["n"]?.contains("not made for network n") == true)
    }

    @Test func badSettingsAreRefused() {
        #expect(NetworkPlan.problem(.init(name: "n", bridge: "a-very-long-bridge-name", mode: "vxlan", vni: 1)) != nil)
        #expect(NetworkPlan.problem(.init(name: "n", bridge: "b", mode: "vxlan", vni: 0)) != nil)
        #expect(NetworkPlan.problem(.init(name: "n", bridge: "b", mode: "vxlan", vni: 5, peers: ["host;rm -rf"])) != nil)
        #expect(NetworkPlan.problem(.init(name: "n", bridge: "b", mode: "vlan", uplink: "eth0", vlan: 4095)) != nil)
        #expect(NetworkPlan.problem(.init(name: "n", bridge: "b/c", mode: "bridge")) != nil)
        #expect(NetworkPlan.problem(.init(name: "n", bridge: "b", mode: "vxlan", vni: 5, peers: ["fd00::1", "10.1.2.3"])) == nil)
    }

    /// Property: from any mix of wanted networks and leftovers, one plan reaches the wanted state and
    /// a second plan has nothing to do; links the agent did not make are never touched.
    @Test func planConverges() throws {
        var rng = SplitMix(20261202)
        for _ in 0..<300 {
            var have = Self.base
            // Leftovers from earlier settings.
            let old = (0..<rng.int(0...3)).map { i in
                NetworkSetting(name: "old\(i)", bridge: "vsx\(900 + i)", mode: "vxlan", vni: 900 + i, peers: ["10.9.0.\(i + 1)"])
            }
            have = try Self.run(NetworkPlan.plan(want: old, have: have).commands, on: have)
            var want: [NetworkSetting] = []
            for i in 0..<rng.int(0...5) {
                let peers = (1...rng.int(1...4)).map { "10.0.\(rng.int(0...2)).\($0)" }
                if rng.int(0...2) == 0 {
                    want.append(.init(name: "v\(i)", bridge: "vsv\(10 + i)", mode: "vlan", uplink: "eth0", vlan: 10 + i, mtu: rng.int(0...1) == 0 ? nil : 1400))
                } else {
                    want.append(.init(name: "x\(i)", bridge: "vsx\(100 + i)", mode: "vxlan", vni: 100 + i, peers: Array(Set(peers)).sorted(),
                                      mtu: rng.int(0...1) == 0 ? nil : 1400))
                }
            }
            if rng.int(0...1) == 0 { want += old.prefix(1) }
            let plan = NetworkPlan.plan(want: want, have: have)
            #expect(plan.errors.isEmpty)
            let after = try Self.run(plan.commands, on: have)
            #expect(NetworkPlan.plan(want: want, have: after).commands.isEmpty)
            #expect(NetworkPlan.status(want: want, have: after, errors: [:]).allSatisfy { $0.up && $0.error == nil })
            for l in Self.base.links { #expect(after.link(l.name) == l) }
            let keep = Set(want.flatMap { [$0.bridge, NetworkPlan.tunnel($0)!] })
            #expect(after.links.filter { ($0.alias ?? "").hasPrefix("vsphere:") }.allSatisfy { keep.contains($0.name) })
        }
    }

    /// What `ip -json -details link show` and `bridge -json fdb show` print (trimmed from this machine).
    @Test func parsesIproute2() throws {
        let links = #"""
        [{"ifindex":2,"ifname":"br0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"operstate":"UP","linkinfo":{"info_kind":"bridge","info_data":{"forward_delay":1500}}},
         {"ifindex":3,"link_index":9,"link_netnsid":0,"ifname":"eth0","flags":["BROADCAST","UP"],"mtu":1500,"master":"br0","linkinfo":{"info_kind":"veth","info_slave_kind":"bridge"}},
         {"ifindex":5,"ifname":"vsvxlan7","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1450,"master":"vsx7","ifalias":"vsphere:net7","linkinfo":{"info_kind":"vxlan","info_data":{"id":7,"link":"br0","port":4789,"learning":true}}},
         {"ifindex":6,"ifname":"vsvlan5","link":"eth0","flags":["BROADCAST"],"mtu":1500,"linkinfo":{"info_kind":"vlan","info_data":{"protocol":"802.1Q","id":5}}}]
        """#
        let parsed = try HostLinks.parseLinks(Data(links.utf8))
        #expect(parsed.count == 4)
        #expect(parsed[1] == .init(name: "eth0", kind: "veth", master: "br0", up: true, mtu: 1500))
        #expect(parsed[2] == .init(name: "vsvxlan7", kind: "vxlan", master: "vsx7", up: true, mtu: 1450, alias: "vsphere:net7", id: 7, port: 4789, parent: "br0"))
        #expect(parsed[3].kind == "vlan" && parsed[3].id == 5 && parsed[3].parent == "eth0" && !parsed[3].up)
        let fdb = #"[{"mac":"5a:1c:0f:b1:84:95","flags":[],"master":"vsx7","state":"permanent"},{"mac":"00:00:00:00:00:00","ifname":"vsvxlan7","dst":"10.250.2.2","flags":["self"],"state":"permanent"},{"mac":"00:00:00:00:00:00","ifname":"vsvxlan7","dst":"10.250.1.3","flags":["self"],"state":"permanent"}]"#
        #expect(try HostLinks.parseFlood(Data(fdb.utf8)) == ["vsvxlan7": ["10.250.1.3", "10.250.2.2"]])
    }
}
