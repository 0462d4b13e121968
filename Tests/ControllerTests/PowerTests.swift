import AgentAPI
import ClusterModel
@testable import Controller
import Foundation
import Planner
import Spawn
import Testing

@Suite struct PowerDriverTests {
    func host(_ driver: String, _ options: [String: String]) -> ClusterManifest.Host {
        ClusterManifest.Host(name: "h7", agent: "https://10.0.0.7:7443", power: .init(driver: driver, options: options))
    }

    /// A real magic packet over UDP on loopback: 6 × 0xff, then the MAC 16 times.
    @Test func wakeOnLANSendsTheMagicPacket() throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        #expect(bound)
        let port = UInt16(bigEndian: addr.sin_port)
        try PowerDrivers.wake(mac: "52:54:00:ab:cd:ef", broadcast: "127.0.0.1", port: port)
        var buf = [UInt8](repeating: 0, count: 256)
        let n = recv(fd, &buf, buf.count, 0)
        #expect(n == 102)
        #expect(Array(buf[0..<6]) == [UInt8](repeating: 0xff, count: 6))
        for k in 0..<16 { #expect(Array(buf[(6 + 6 * k)..<(12 + 6 * k)]) == [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]) }
        #expect(throws: (any Error).self) { try PowerDrivers.magicPacket(mac: "52:54:00") }
    }

    @Test func ipmiCommandLines() throws {
        let h = host("ipmi", ["address": "10.1.1.7", "username": "admin", "passwordFile": "/etc/vsphere/bmc.pw"])
        let on = try #require(try PowerDrivers.command(true, h))
        #expect(on.0 == "ipmitool")
        #expect(on.1 == ["-I", "lanplus", "-H", "10.1.1.7", "-U", "admin", "-f", "/etc/vsphere/bmc.pw", "chassis", "power", "on"])
        let off = try #require(try PowerDrivers.command(false, host("ipmi", ["address": "10.1.1.7", "interface": "lan"])))
        #expect(off.1 == ["-I", "lan", "-H", "10.1.1.7", "-E", "chassis", "power", "soft"], "ACPI soft-off; the password from IPMI_PASSWORD")
    }

    @Test func whatEachDriverCanDo() {
        #expect(PowerDrivers.can(true, host("wol", ["mac": "52:54:00:ab:cd:ef"])) == nil)
        #expect(PowerDrivers.can(false, host("wol", ["mac": "52:54:00:ab:cd:ef"]))?.contains("cannot power a host off") == true)
        #expect(PowerDrivers.can(false, host("wol", ["mac": "52:54:00:ab:cd:ef", "off": "true"])) == nil)
        #expect(PowerDrivers.can(true, host("none", [:])) != nil)
        #expect(PowerDrivers.can(true, ClusterManifest.Host(name: "x")) == "no power driver")
    }

    /// The operator's commands run through /bin/sh with the host's name in the environment only: a
    /// hostile name would never be parsed as shell.
    @Test func commandDriverRunsTheOperatorsScript() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("power-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let log = dir.appendingPathComponent("log").path
        let h = host("command", ["on": "echo \"on $VSPHERE_POWER_HOST $VSPHERE_POWER_AGENT_URL\" >> \(log)", "off": "echo off >> \(log); exit 3"])
        _ = try await PowerDrivers.run(true, h)
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "on h7 https://10.0.0.7:7443\n")
        await #expect(throws: Spawn.Failure.self) { _ = try await PowerDrivers.run(false, h) }
    }

    /// A command that leaves a background process holding its output returns when it exits; one that
    /// hangs is killed at its deadline.
    @Test func spawnNeverWaitsForeverOnAChild() throws {
        let start = Date()
        let out = try Spawn.run("/bin/sh", ["-c", "sleep 30 & echo started $!; exit 0"])
        #expect(out.contains("started"))
        #expect(Date().timeIntervalSince(start) < 10, "returned when the shell exited, not when its background sleep did")
        if let pid = out.split(separator: " ").last.flatMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) { kill(pid, SIGKILL) }
        let t = Date()
        #expect(throws: Spawn.Failure.self) { _ = try Spawn.run("/bin/sh", ["-c", "exec sleep 30"], timeoutSeconds: 1) }
        #expect(Date().timeIntervalSince(t) < 10)
    }

    /// A child gets stdin, stdout and stderr only: nothing else of ours (a daemon it starts would keep
    /// our listening sockets and pipes).
    @Test func childrenGetNoOtherDescriptors() throws {
        #expect(Spawn.addCloseFrom != nil, "glibc has posix_spawn_file_actions_addclosefrom_np")
        let fd = open("/dev/null", O_RDONLY)  // not close-on-exec
        defer { close(fd) }
        let out = try Spawn.run("/bin/sh", ["-c", "ls /proc/self/fd"])
        let fds = Set(out.split(separator: "\n").compactMap { Int($0) })
        #expect(fds.isSubset(of: [0, 1, 2, 3]), "\(fds)")  // 3: ls's own directory handle
        #expect(!fds.contains(Int(fd)) || fd == 3)
    }
}

@Suite struct DemandTrackerTests {
    func stats(_ name: String, cpuNs: Int64, rssKiB: Int64 = 65536, state: String = "running") -> VMStats {
        VMStats(name: name, state: state, cpuTimeNs: cpuNs, vcpus: 1, memoryKiB: 131072, raw: ["balloon.rss": .int(rssKiB)])
    }

    @Test func cpuDemandFromCPUTimeGrowth() {
        let t = DemandTracker()
        t.record(host: "h1", stats: [stats("a", cpuNs: 0)], nowMs: 0, windowSeconds: 0.001)
        #expect(t.demand(coreMHz: ["h1": 2000])["a"]?.cpuMHz == 0, "one observation: no rate yet")
        // Half a core for 2 s.
        t.record(host: "h1", stats: [stats("a", cpuNs: 1_000_000_000)], nowMs: 2000, windowSeconds: 0.001)
        let d = t.demand(coreMHz: ["h1": 2000])["a"]
        #expect(abs((d?.cpuMHz ?? 0) - 1000) < 1)
        #expect(d?.memoryMiB == 64)
        // Migrated: on another host the counter starts over; a new baseline, not a negative rate.
        t.record(host: "h2", stats: [stats("a", cpuNs: 5)], nowMs: 3000, windowSeconds: 0.001)
        #expect(t.demand(coreMHz: [:])["a"]?.cpuMHz == 0)
        // Smoothing: a jump moves the estimate part of the way.
        let s = DemandTracker()
        s.record(host: "h1", stats: [stats("b", cpuNs: 0)], nowMs: 0, windowSeconds: 10)
        s.record(host: "h1", stats: [stats("b", cpuNs: 0)], nowMs: 1000, windowSeconds: 10)
        s.record(host: "h1", stats: [stats("b", cpuNs: 1_000_000_000)], nowMs: 2000, windowSeconds: 10)
        let b = s.demand(coreMHz: ["h1": 1000])["b"]!.cpuMHz
        #expect(b > 50 && b < 200, "\(b)")
        // Gone from the host: forgotten.
        s.record(host: "h1", stats: [], nowMs: 3000, windowSeconds: 10)
        #expect(s.demand(coreMHz: [:])["b"] == nil)
    }

    @Test func historyKeepsTheWindow() {
        let t = DemandTracker()
        for i in 0..<100 { t.addSample(UtilizationSample(timeMs: Int64(i) * 1000, loads: []), keepSeconds: 10) }
        let s = t.samples()
        #expect(s.last?.timeMs == 99_000)
        #expect((s.first?.timeMs ?? 0) <= 89_000 && (s.first?.timeMs ?? 0) >= 88_000, "one sample older than the window stays: the window is covered")
    }
}
