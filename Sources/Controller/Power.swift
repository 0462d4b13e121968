import ClusterModel
import Foundation
import Spawn
import SystemFiles
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

/// What the controller may run to switch hosts, and the credentials it may use: the controller's own
/// configuration (`--power-config`, default /etc/vsphere/power.json), owned by its administrator, never
/// a manifest. A manifest only names entries of it (`profile`, `credential`), so an operator who may
/// apply manifests cannot make the controller run a program or read a file of their choosing.
///
/// ```json
/// { "commands": { "pdu": { "on": ["/usr/local/sbin/pdu", "on"], "off": ["/usr/local/sbin/pdu", "off"] } },
///   "credentials": { "bmc": "/etc/vsphere/bmc.password" },
///   "testbedScript": "/opt/vsphere/scripts/testbed.sh" }
/// ```
/// A credential may also come from systemd (`LoadCredential=NAME:FILE` puts it in
/// $CREDENTIALS_DIRECTORY/NAME).
public struct PowerConfig: Codable, Sendable, Equatable {
    public struct Command: Codable, Sendable, Equatable {
        /// Program and arguments (no shell) that power the host on, and off.
        public var on: [String]?
        public var off: [String]?
        public init(on: [String]? = nil, off: [String]? = nil) {
            self.on = on
            self.off = off
        }
    }
    public var commands: [String: Command]
    /// Credential name → file holding it (an IPMI password).
    public var credentials: [String: String]
    /// The testbed driver's script (tests only).
    public var testbedScript: String?

    public init(commands: [String: Command] = [:], credentials: [String: String] = [:], testbedScript: String? = nil) {
        self.commands = commands
        self.credentials = credentials
        self.testbedScript = testbedScript
    }

    enum CodingKeys: String, CodingKey, CaseIterable { case commands, credentials, testbedScript }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        commands = try c.decodeIfPresent([String: Command].self, forKey: .commands) ?? [:]
        credentials = try c.decodeIfPresent([String: String].self, forKey: .credentials) ?? [:]
        testbedScript = try c.decodeIfPresent(String.self, forKey: .testbedScript)
    }

    public struct Problem: Error, CustomStringConvertible {
        public var description: String
    }

    /// Loads and checks the file: it must belong to root or to the controller's own user and be
    /// writable by no one else (what it names runs as the controller); every program and file in it
    /// is an absolute path. A missing file at the default path is an empty configuration.
    public static func load(path: String, required: Bool) throws(Problem) -> PowerConfig {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            if !required && errno == ENOENT { return PowerConfig() }
            throw Problem(description: "\(path): \(String(cString: strerror(errno)))")
        }
        guard st.st_mode & S_IFMT == S_IFREG else { throw Problem(description: "\(path): not a regular file") }
        guard st.st_uid == 0 || st.st_uid == geteuid() else {
            throw Problem(description: "\(path): owned by uid \(st.st_uid); it must belong to root or to the controller's user")
        }
        guard st.st_mode & 0o022 == 0 else {
            throw Problem(description: "\(path): writable by group or others (mode \(String(st.st_mode & 0o777, radix: 8))); it must not be")
        }
        guard let text = TextFile.read(path, limit: 1 << 20) else { throw Problem(description: "\(path): cannot be read") }
        let config: PowerConfig
        do {
            if let unknown = try JSONValue.firstUnknownKey(in: Data(text.utf8), known: CodingKeys.allCases.map(\.rawValue)) {
                throw Problem(description: "\(path): \(unknown): unknown field")
            }
            config = try JSONDecoder().decode(PowerConfig.self, from: Data(text.utf8))
        } catch let p as Problem {
            throw p
        } catch {
            throw Problem(description: "\(path): \(error)")
        }
        if let bad = config.problems().first { throw Problem(description: "\(path): \(bad)") }
        return config
    }

    /// What is wrong with the configuration, each with its field.
    public func problems() -> [String] {
        var out: [String] = []
        for (name, c) in commands.sorted(by: { $0.key < $1.key }) {
            if !Names.isValid(name) { out.append("commands.\(name): a profile's name must match ^[a-z][a-z0-9-]{0,62}$") }
            for (which, argv) in [("on", c.on), ("off", c.off)] {
                guard let argv else { continue }
                if argv.first.map({ !$0.hasPrefix("/") }) ?? true { out.append("commands.\(name).\(which): must start with an absolute program path") }
            }
        }
        for (name, file) in credentials.sorted(by: { $0.key < $1.key }) where !file.hasPrefix("/") {
            out.append("credentials.\(name): must be an absolute path")
        }
        if let t = testbedScript, !t.hasPrefix("/") { out.append("testbedScript: must be an absolute path") }
        return out
    }

    /// The file holding a credential: the configuration's, else systemd's credential of that name.
    public func credentialFile(_ name: String) -> String? {
        if let f = credentials[name] { return f }
        if let dir = ProcessInfo.processInfo.environment["CREDENTIALS_DIRECTORY"], Names.isValid(name),
           FileManager.default.fileExists(atPath: dir + "/" + name) {
            return dir + "/" + name
        }
        return nil
    }
}

/// Host power drivers: how a host is switched on and off.
///
/// - `ipmi`: `ipmitool -I lanplus -H ADDRESS -U USER -f PASSWORDFILE chassis power on|soft`, the password
///   file being the controller's credential the manifest names (`credential`); without one, the
///   password comes from IPMI_PASSWORD in the controller's environment (`-E`). Power off is ACPI
///   soft-off: the host's OS shuts down cleanly.
/// - `wol`: Wake-on-LAN magic packet (6 × 0xff, 16 × the MAC) to BROADCAST:PORT (default
///   255.255.255.255:9); powering off needs `off`, a command profile of the controller's.
/// - `command`: the `on` and `off` programs of the controller's command profile `profile`.
/// - `testbed`: `bash SCRIPT power HOST on|off` with the controller's testbed script.
/// Programs get VSPHERE_POWER_HOST (the host's name) and VSPHERE_POWER_AGENT_URL in their environment;
/// nothing from a manifest becomes a program, and the host's name never becomes part of a command line.
public enum PowerDrivers {
    public struct Unsupported: Error, CustomStringConvertible {
        public var description: String
    }

    /// Why the driver cannot switch the host `on` (true) or off (false), or nil when it can.
    public static func can(_ on: Bool, _ host: ClusterManifest.Host, _ config: PowerConfig) -> String? {
        guard let p = host.power else { return "no power driver" }
        let o = p.options
        func profile(_ name: String?, _ on: Bool) -> String? {
            guard let name else { return nil }
            guard let c = config.commands[name] else { return "no command profile \(name) in the controller's power configuration" }
            return (on ? c.on : c.off) == nil ? "command profile \(name) has no \(on ? "on" : "off") command" : nil
        }
        switch p.driver {
        case "none": return "its power driver is none"
        case "wol" where !on:
            return o["off"] == nil ? "Wake-on-LAN cannot power a host off (give the driver an off command profile)" : profile(o["off"], false)
        case "command": return profile(o["profile"], on)
        case "ipmi":
            if let c = o["credential"], config.credentialFile(c) == nil { return "no credential \(c) in the controller's power configuration" }
            return nil
        case "testbed" where (config.testbedScript ?? ProcessInfo.processInfo.environment["VSPHERE_TESTBED_SCRIPT"]) == nil:
            return "the testbed driver needs the controller's testbedScript (power configuration) or VSPHERE_TESTBED_SCRIPT"
        default: return nil
        }
    }

    /// The program and arguments that switch the host (nil for Wake-on-LAN's power-on, a packet).
    public static func command(_ on: Bool, _ host: ClusterManifest.Host, _ config: PowerConfig) throws -> (String, [String])? {
        if let why = can(on, host, config) { throw Unsupported(description: "\(host.name): \(why)") }
        let p = host.power!
        let o = p.options
        func argv(_ profile: String) -> (String, [String]) {
            let c = config.commands[profile]!
            let a = (on ? c.on : c.off)!
            return (a[0], Array(a.dropFirst()))
        }
        switch p.driver {
        case "ipmi":
            var args = ["-I", o["interface"] ?? "lanplus", "-H", o["address"]!]
            if let u = o["username"] { args += ["-U", u] }
            if let c = o["credential"] { args += ["-f", config.credentialFile(c)!] } else { args += ["-E"] }
            return ("ipmitool", args + ["chassis", "power", on ? "on" : "soft"])
        case "wol":
            return on ? nil : argv(o["off"]!)
        case "command":
            return argv(o["profile"]!)
        case "testbed":
            let script = config.testbedScript ?? ProcessInfo.processInfo.environment["VSPHERE_TESTBED_SCRIPT"]!
            return ("bash", [script, "power", o["host"]!, on ? "on" : "off"])
        default:
            throw Unsupported(description: "\(host.name): unknown power driver \(p.driver)")
        }
    }

    /// A power command that takes longer is killed and counts as failed.
    public static let commandTimeoutSeconds = 300.0

    /// Switches the host; returns what the driver printed.
    public static func run(_ on: Bool, _ host: ClusterManifest.Host, _ config: PowerConfig) async throws -> String {
        if host.power?.driver == "wol" && on {
            let o = host.power!.options
            try wake(mac: o["mac"]!, broadcast: o["broadcast"] ?? "255.255.255.255", port: UInt16(o["port"] ?? "9") ?? 9)
            return "magic packet sent to \(o["mac"]!)"
        }
        guard let (program, args) = try command(on, host, config) else { return "" }
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
