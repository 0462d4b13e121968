import ClusterModel
import Foundation
import TestSupport
import Testing

/// Networks of the distributed switch in the manifest: their checks, their host bridges, and MAC
/// addresses allocated cluster-wide.
@Suite struct NetworkManifest {
    func problems(_ body: String) -> [String] {
        do {
            _ = try ClusterManifest.decodeValidated(Data((#"{"apiVersion":"vsphere/v1","kind":"Cluster","# + body + "}").utf8))
            return []
        } catch {
            return error.problems.map(\.description)
        }
    }

    @Test func fullNetworkIsValid() {
        #expect(problems(#"""
            "networks":[{"name":"prod","type":"vxlan","vni":1001,"mtu":1400,"antiSpoofing":true,
                         "bandwidth":{"inbound":{"averageKBps":1000,"peakKBps":2000,"burstKiB":512}},
                         "portGroups":[{"name":"dmz","antiSpoofing":false},{"name":"slow","bandwidth":{"outbound":{"averageKBps":100}}}]},
                        {"name":"legacy","type":"bridge","vlan":100,"uplink":"bond0"}],
            "vms":[{"name":"a","cpus":1,"memoryMiB":64,"nics":[{"network":"prod","portGroup":"dmz","mac":"52:54:00:00:00:01"}]}]
            """#) == [])
    }

    @Test func networkMistakesNameTheirField() {
        #expect(problems(#""networks":[{"name":"a","type":"vxlan"}]"#) == ["networks[0].vni: a vxlan network needs its VNI"])
        #expect(problems(#""networks":[{"name":"a","type":"vxlan","vni":5,"vlan":3}]"#)
            == ["networks[0].vlan: a vxlan network carries no VLAN tag (give each segment its own VNI)"])
        #expect(problems(#""networks":[{"name":"a","vni":5}]"#) == ["networks[0].vni: only a vxlan network has a VNI"])
        #expect(problems(#""networks":[{"name":"a","type":"vxlan","vni":5,"mtu":100}]"#) == ["networks[0].mtu: must be between 576 and 9000"])
        #expect(problems(#""networks":[{"name":"a","uplink":"eth0"}]"#)
            == ["networks[0].uplink: a plain bridge network uses the operator's bridge as it is; uplink is for VLAN and VXLAN networks"])
        #expect(problems(#""networks":[{"name":"a","type":"vxlan","vni":5,"bridge":"br0"},{"name":"b","bridge":"br0"}]"#)
            == ["networks[1].bridge: bridge br0 also carries networks[0]: each network needs its own bridge"])
        #expect(problems(#""networks":[{"name":"a","type":"vxlan","vni":5,"portGroups":[{"name":"g"},{"name":"g"}]}]"#)
            == ["networks[0].portGroups[1].name: port group g is given twice"])
        #expect(problems(#""networks":[{"name":"a","type":"vxlan","vni":5,"bandwidth":{"inbound":{"averageKBps":10,"peakKBps":5}}}]"#)
            == ["networks[0].bandwidth.inbound.peakKBps: must not be below averageKBps (10)"])
        #expect(problems(#""networks":[{"name":"a","type":"vxlan","vni":5,"bandwidth":{}}]"#) == ["networks[0].bandwidth: needs inbound, outbound or both"])
    }

    @Test func nicMistakesNameTheirField() {
        let net = #""networks":[{"name":"prod","type":"vxlan","vni":7,"portGroups":[{"name":"dmz"}]}],"#
        #expect(problems(net + #""vms":[{"name":"a","cpus":1,"memoryMiB":64,"nics":[{"network":"prod","portGroup":"web"}]}]"#)
            == ["vms[0].nics[0].portGroup: network prod has no port group web"])
        #expect(problems(net + #""vms":[{"name":"a","cpus":1,"memoryMiB":64,"nics":[{"network":"prod","filter":"no-ip-spoofing"}]}]"#)
            == ["vms[0].nics[0].filter: is set from the network's antiSpoofing (or its port group's)"])
        #expect(problems(net + #""vms":[{"name":"a","cpus":1,"memoryMiB":64,"nics":[{"network":"prod","mac":"52:54:00:00:00:01"}]},{"name":"b","cpus":1,"memoryMiB":64,"nics":[{"network":"prod","mac":"52:54:00:00:00:01"}]}]"#)
            == ["vms[1].nics[0].mac: 52:54:00:00:00:01 is also used by vms[0].nics[0]"])
        #expect(problems(net + #""vms":[{"name":"a","cpus":1,"memoryMiB":64,"nics":[{"network":"prod","bandwidth":{"outbound":{"averageKBps":0}}}]}]"#)
            == ["vms[0].nics[0].bandwidth.outbound.averageKBps: must be between 1 and 100000000"])
    }

    @Test func hostBridgesAndMTU() {
        #expect(ClusterManifest.Network(name: "prod", type: "vxlan", vni: 1001).hostBridge == "vsx1001")
        #expect(ClusterManifest.Network(name: "prod", type: "vxlan", vni: 1001).segmentMTU == 1450)
        #expect(ClusterManifest.Network(name: "prod", vlan: 100).hostBridge == "vsv100")
        #expect(ClusterManifest.Network(name: "prod", vlan: 100).mode == "vlan")
        #expect(ClusterManifest.Network(name: "lan", type: "bridge", bridge: "br0").hostBridge == "br0")
        #expect(ClusterManifest.Network(name: "lan").segmentMTU == nil)
    }
}

@Suite struct MACAllocationTests {
    static func vm(_ name: String, nics: Int, mac: String? = nil) -> VMSpec {
        VMSpec(name: name, cpus: 1, memoryMiB: 64, nics: (0..<nics).map { i in VMSpec.NIC(network: "prod", mac: i == 0 ? mac : nil) })
    }

    /// Property: over many applies of new and re-applied VMs, every NIC has a MAC, no two NICs share
    /// one, and a VM re-applied without MACs keeps the ones it was given.
    @Test func uniqueAndStable() {
        var rng = SplitMix(7)
        var desired: [VMSpec] = []
        for round in 0..<200 {
            var doc: [VMSpec] = (0..<rng.int(1...30)).map { i in Self.vm("r\(round)-\(i)", nics: rng.int(0...3)) }
            // Some VMs again, as the user wrote them (no MACs).
            for _ in 0..<rng.int(0...5) where !desired.isEmpty {
                let old = desired[rng.int(0...(desired.count - 1))]
                doc.append(Self.vm(old.name, nics: old.nics.count))
            }
            var seen = Set<String>()
            doc = doc.filter { seen.insert($0.name).inserted }
            let before = Dictionary(desired.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
            MACAllocation.assign(&doc, existing: desired, using: &rng)
            for v in doc {
                if let old = before[v.name] { #expect(v.nics.map(\.mac) == old.nics.map(\.mac), "\(v.name) keeps its MACs") }
                #expect(v.nics.allSatisfy { $0.mac.map(VMSpec.isMAC) == true && $0.mac!.hasPrefix("52:54:00:") })
            }
            let names = Set(doc.map(\.name))
            desired = desired.filter { !names.contains($0.name) } + doc
            let all = desired.flatMap { $0.nics.compactMap(\.mac) }
            #expect(Set(all).count == all.count, "no MAC twice")
        }
        #expect(desired.flatMap(\.nics).count > 3000)
    }

    /// A MAC given explicitly is kept, and never handed to another NIC.
    @Test func explicitMACsStayTaken() {
        var rng = SplitMix(1)
        let existing = [Self.vm("a", nics: 1, mac: "52:54:00:00:00:01")]
        var doc = [Self.vm("b", nics: 2, mac: "52:54:00:00:00:02")]
        MACAllocation.assign(&doc, existing: existing, using: &rng)
        #expect(doc[0].nics[0].mac == "52:54:00:00:00:02")
        #expect(doc[0].nics[1].mac != nil && !["52:54:00:00:00:01", "52:54:00:00:00:02"].contains(doc[0].nics[1].mac!))
        // Re-applied with its own MAC now claimed by another NIC in the same document: a new one.
        var clash = [Self.vm("a", nics: 1), Self.vm("c", nics: 1, mac: "52:54:00:00:00:01")]
        MACAllocation.assign(&clash, existing: existing, using: &rng)
        #expect(clash[1].nics[0].mac == "52:54:00:00:00:01" && clash[0].nics[0].mac != "52:54:00:00:00:01")
    }
}
