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
