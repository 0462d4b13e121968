import ControllerAPI
import Foundation
import Testing

/// Two sites joined by the testbed's WAN (make test's second phase runs `testbed up 2 2`).
@Suite(.enabled(if: Testbed.available && Testbed.sites == 2, "needs a 2-site testbed"))
struct TwoSites {
    @Test func wanLinkDelaysAndCapsTraffic() throws {
        // Host to host across sites goes through the routers and the delaying relay: RTT ≥ 2 × 15 ms.
        let (rc, out) = try Testbed.run(["bash", Testbed.script, "exec", "h1", "ping", "-c", "5", "-i", "0.2", "-W", "2", "10.250.2.2"])
        #expect(rc == 0, "\(out)")
        let avg = out.split(separator: "\n").first { $0.contains("min/avg/max") }
            .flatMap { $0.split(separator: "=").last?.split(separator: "/").dropFirst().first }
            .flatMap { Double($0.trimmingCharacters(in: .whitespaces)) }
        let rtt = try #require(avg, "\(out)")
        #expect(rtt >= 25, "WAN round trip \(rtt) ms")
        let (_, qdisc) = try Testbed.run(["tc", "-n", "vs-r1", "qdisc", "show", "dev", "wan2"])
        #expect(qdisc.contains("tbf") && qdisc.contains("rate"), "\(qdisc)")
        // The root namespace reaches each site on its own bridge: nothing leaves this machine.
        let (_, route) = try Testbed.run(["ip", "route", "get", "10.250.2.2"])
        #expect(route.contains("dev vsbr2"), "\(route)")
    }

    @Test func controllerSeesBothSites() throws {
        let (rc, out) = try Testbed.run([Testbed.ctlBinary, "get", "hosts", "-o", "json"])
        #expect(rc == 0, "\(out)")
        let hosts = try JSONDecoder().decode([HostView].self, from: Data(out.utf8))
        #expect(Dictionary(uniqueKeysWithValues: hosts.map { ($0.name, $0.site ?? "") }) == ["h1": "dc1", "h2": "dc2"])
    }
}

extension ClusterOnTestbed {
/// The distributed switch across sites; serialized with the other controller suites (whose applies
/// with --prune would take these VMs for strays).
@Suite(.serialized, .enabled(if: Testbed.available && Testbed.sites == 2 && !Testbed.ctlBinary.isEmpty, "needs the two-site testbed"))
struct OverlayAcrossSites {
    /// A VXLAN network spans both sites: guests in dc1 and dc2 ping each other through the overlay,
    /// whose tunnels ride the routed WAN between the sites.
    @Test func overlayNetworkAcrossSites() async throws {
        let t = VMotionHelpers()
        defer { for v in ["wan-a", "wan-b"] { try? t.delete(v) } }
        try PingLog.apply(t, file: "net-wan", networks: #"{"name":"stretched","type":"vxlan","vni":5301}"#, vms: [
            PingLog.vm("wan-a", network: "stretched", ip: "10.79.0.1", hosts: ["h1"], ping: ["10.79.0.2"]),
            PingLog.vm("wan-b", network: "stretched", ip: "10.79.0.2", hosts: ["h2"], ping: ["10.79.0.1"]),
        ])
        for (vm, host, peer) in [("wan-a", "h1", "10.79.0.2"), ("wan-b", "h2", "10.79.0.1")] {
            let line = try await eventually("\(vm) hears \(peer) across the WAN", timeout: .seconds(120)) { () -> String? in
                let console = try await PingLog.console(vm, on: host)
                return PingLog.replies(console, from: peer).count >= 5 ? console.split(whereSeparator: \.isNewline).last { $0.contains("bytes from") }.map(String.init) : nil
            }
            // Through the WAN relay: the overlay's round trip carries the sites' delay.
            let ms = line.split(separator: "time=").last.flatMap { Double($0.prefix { $0.isNumber || $0 == "." }) } ?? 0
            #expect(ms >= 20, "\(line)")
        }
        let (_, fdb) = try Testbed.run(["bash", Testbed.script, "exec", "h1", "bridge", "fdb", "show", "dev", "vsvxlan5301"])
        #expect(fdb.contains("00:00:00:00:00:00 dst 10.250.2.2"), "h1 floods the segment to h2 in the other site: \(fdb)")
    }
}
}
