import ClusterModel
import Foundation
import Spawn
#if canImport(Glibc)
import Glibc
#endif

/// A host's power as the controller manages it (stored with the host's status).
public struct PowerRecord: Codable, Sendable, Equatable {
    /// `on`, `standby` (powered off by DPM, which may wake it), `poweringOn`, `off` (powered off by the
    /// operator's hand: DPM leaves it alone).
    public var state: String
    public var sinceMs: Int64
    /// `dpm`, `drs apply`, `operator`, `observed`.
    public var by: String
    public var reason: String?
    public var error: String?
    public init(state: String, sinceMs: Int64, by: String, reason: String? = nil, error: String? = nil) {
        self.state = state
        self.sinceMs = sinceMs
        self.by = by
        self.reason = reason
        self.error = error
    }
}

/// Host power drivers: how a host is switched on and off.
///
/// - `ipmi`: `ipmitool -I lanplus -H ADDRESS -U USER -f PASSWORDFILE chassis power on|soft` (the password
///   from IPMI_PASSWORD with `-E` when no file is given). Power off is ACPI soft-off: the host's OS shuts
///   down cleanly.
/// - `wol`: Wake-on-LAN magic packet (6 × 0xff, 16 × the MAC) to BROADCAST:PORT (default
///   255.255.255.255:9); powering off needs the driver's `off` command.
/// - `command`: the operator's `on` and `off` shell commands.
/// - `testbed`: `bash SCRIPT power HOST on|off` (stops or starts the test host's libvirtd and agent).
/// Commands get VSPHERE_POWER_HOST (the host's name) and VSPHERE_POWER_AGENT_URL in their environment;
/// the host's name never becomes part of a command line.
public enum PowerDrivers {
    public struct Unsupported: Error, CustomStringConvertible {
        public var description: String
    }

    /// Whether the driver can switch the host `on` (true) or off (false).
    public static func can(_ on: Bool, _ host: ClusterManifest.Host) -> String? {
        guard let p = host.power else { return "no power driver" }
        switch p.driver {
        case "none": return "its power driver is none"
        case "wol" where !on && p.options["off"] == nil: return "Wake-on-LAN cannot power a host off (give the driver an off command)"
        case "testbed" where p.options["script"] == nil && ProcessInfo.processInfo.environment["VSPHERE_TESTBED_SCRIPT"] == nil:
            return "the testbed driver needs its script (option script or VSPHERE_TESTBED_SCRIPT)"
        default: return nil
        }
    }

    /// The program and arguments that switch the host (nil for Wake-on-LAN's power-on, a packet).
    public static func command(_ on: Bool, _ host: ClusterManifest.Host) throws -> (String, [String])? {
        if let why = can(on, host) { throw Unsupported(description: "\(host.name): \(why)") }
        let p = host.power!
        let o = p.options
        switch p.driver {
        case "ipmi":
            var args = ["-I", o["interface"] ?? "lanplus", "-H", o["address"]!]
            if let u = o["username"] { args += ["-U", u] }
            if let f = o["passwordFile"] { args += ["-f", f] } else { args += ["-E"] }
            return ("ipmitool", args + ["chassis", "power", on ? "on" : "soft"])
        case "wol":
            return on ? nil : ("/bin/sh", ["-c", o["off"]!])
        case "command":
            return ("/bin/sh", ["-c", on ? o["on"]! : o["off"]!])
        case "testbed":
            let script = o["script"] ?? ProcessInfo.processInfo.environment["VSPHERE_TESTBED_SCRIPT"]!
            return ("bash", [script, "power", o["host"]!, on ? "on" : "off"])
        default:
            throw Unsupported(description: "\(host.name): unknown power driver \(p.driver)")
        }
    }

    /// A power command that takes longer is killed and counts as failed.
    public static let commandTimeoutSeconds = 300.0

    /// Switches the host; returns what the driver printed.
    public static func run(_ on: Bool, _ host: ClusterManifest.Host) async throws -> String {
        if host.power?.driver == "wol" && on {
            let o = host.power!.options
            try wake(mac: o["mac"]!, broadcast: o["broadcast"] ?? "255.255.255.255", port: UInt16(o["port"] ?? "9") ?? 9)
            return "magic packet sent to \(o["mac"]!)"
        }
        guard let (program, args) = try command(on, host) else { return "" }
        let env = ["VSPHERE_POWER_HOST": host.name, "VSPHERE_POWER_AGENT_URL": host.agent ?? ""]
        return try await withCheckedThrowingContinuation { cont in
            DispatchQueue.global().async {
                cont.resume(with: Result { try Spawn.run(program, args, environment: env, timeoutSeconds: Self.commandTimeoutSeconds) })
            }
        }
    }

    /// The Wake-on-LAN magic packet for a MAC address.
    public static func magicPacket(mac: String) throws -> [UInt8] {
        let bytes = mac.split(separator: ":").compactMap { UInt8($0, radix: 16) }
        guard bytes.count == 6 else { throw Unsupported(description: "\(mac) is not a MAC address") }
        return [UInt8](repeating: 0xff, count: 6) + (0..<16).flatMap { _ in bytes }
    }

    /// Sends the magic packet over UDP (broadcast allowed).
    public static func wake(mac: String, broadcast: String, port: UInt16) throws {
        let packet = try magicPacket(mac: mac)
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw Unsupported(description: "socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &on, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        guard inet_pton(AF_INET, broadcast, &addr.sin_addr) == 1 else { throw Unsupported(description: "\(broadcast) is not an IPv4 address") }
        let sent = withUnsafePointer(to: &addr) { a in
            a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                packet.withUnsafeBytes { sendto(fd, $0.baseAddress, packet.count, 0, sa, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        guard sent == packet.count else { throw Unsupported(description: "sendto \(broadcast):\(port): \(String(cString: strerror(errno)))") }
    }
}
