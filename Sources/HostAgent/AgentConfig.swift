import ClusterModel
import DomainXML
import FoundationEssentials
import Glibc
import SystemFiles

/// The agent's settings: /etc/vsphere/agent.json, overridden by command-line flags.
public struct AgentConfig: Codable, Sendable, Equatable {
    /// Address to listen on; `0.0.0.0` for all.
    public var listen: String = "0.0.0.0"
    public var port: Int = 7443
    /// libvirt connection URI.
    public var libvirtURI: String = "qemu:///system"
    /// `auto`, `kvm` or `tcg`.
    public var accelerator: String = "auto"
    /// The CPU model given to guests whose spec names none.
    public var cpuModel: String = "qemu64"
    /// Host name reported in the inventory; the libvirt host name when empty.
    public var hostName: String = ""
    /// Where the agent keeps its state (TLS key and certificate).
    public var dataDir: String = "/var/lib/vsphere/agent"
    /// The agent's TLS certificate chain and key (PEM), issued by the cluster CA; default
    /// `dataDir/tls/agent.crt` and `agent.key` (`vsphere-controller issue` writes them there).
    public var tlsCertificate: String?
    public var tlsKey: String?
    /// The cluster CA: only clients with a certificate it signed are served (mutual TLS, always);
    /// default `dataDir/tls/cluster-ca.crt`.
    public var clientCA: String?
    /// Serial numbers of revoked cluster certificates, refused in the handshake; default
    /// `dataDir/tls/revoked.txt` (the controller keeps it current through the API).
    public var revokedCertificates: String?
    /// Names and addresses the agent is reached by (documentation for the certificate it needs).
    public var tlsSubjectAltNames: [String] = []
    /// Directories whose images may be templates of clones (besides every storage pool's directory):
    /// a clone's backing file is opened, and labelled, by QEMU and libvirt, so not any host file may be one.
    public var templateDirs: [String] = ["/var/lib/vsphere/templates"]
    /// Directories, besides this host's storage pools, where a VM's disk images may be (a disk given
    /// by `path`, an image prepared for an incoming migration). Anything else (a host file, a block
    /// device) is refused.
    public var diskDirs: [String] = ["/var/lib/vsphere/disks", "/var/lib/libvirt/images"]
    /// Where QEMU's serial console is logged, one file per VM.
    public var consoleLogDir: String = "/var/log/libvirt/qemu"
    /// How long a graceful (ACPI) shutdown may take before the VM is powered off.
    public var shutdownTimeoutSeconds: Int = 60
    /// `auto` (from CAP_SYS_RESOURCE), `definition` or `live`: where the memory hard limit is applied.
    public var hardLimitMode: String = "auto"
    /// Memory (MiB) kept for the host itself, never reserved for VMs.
    public var hostReservedMemoryMiB: Int = 0
    /// The host CPUs guests run on (libvirt CPU list, e.g. "2-15"); the rest stay with the host. All when
    /// absent. Keep it the same on the hosts of a cluster: a migrating guest keeps its CPU list.
    public var guestCPUs: String?
    /// Core parking: pin guests onto as few guest CPUs as their load needs at the target utilization
    /// (default off), checked every interval; `offlineParkedCPUs` also takes the parked CPUs offline.
    public var coreParking: Bool = false
    public var coreParkingTargetUtilization: Double = 0.5
    public var coreParkingIntervalSeconds: Int = 10
    public var offlineParkedCPUs: Bool = false
    /// The host interface VLAN networks tag their frames on (and VXLAN tunnels are bound to) when the
    /// manifest's network names none.
    public var uplink: String?

    public init() {}

    /// Where the TLS identity and the cluster CA are read from.
    public var certificatePath: String { tlsCertificate ?? dataDir + "/tls/agent.crt" }
    public var keyPath: String { tlsKey ?? dataDir + "/tls/agent.key" }
    public var clientCAPath: String { clientCA ?? dataDir + "/tls/cluster-ca.crt" }
    public var revokedCertificatesPath: String { revokedCertificates ?? dataDir + "/tls/revoked.txt" }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case listen, port, libvirtURI, accelerator, cpuModel, hostName, dataDir, tlsCertificate, tlsKey, clientCA, revokedCertificates
        case tlsSubjectAltNames, templateDirs, diskDirs, consoleLogDir, shutdownTimeoutSeconds, hardLimitMode, hostReservedMemoryMiB, guestCPUs
        case coreParking, coreParkingTargetUtilization, coreParkingIntervalSeconds, offlineParkedCPUs, uplink
    }

    public init(from decoder: any Decoder) throws {
        let d = AgentConfig()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        listen = try c.decodeIfPresent(String.self, forKey: .listen) ?? d.listen
        port = try c.decodeIfPresent(Int.self, forKey: .port) ?? d.port
        libvirtURI = try c.decodeIfPresent(String.self, forKey: .libvirtURI) ?? d.libvirtURI
        accelerator = try c.decodeIfPresent(String.self, forKey: .accelerator) ?? d.accelerator
        cpuModel = try c.decodeIfPresent(String.self, forKey: .cpuModel) ?? d.cpuModel
        hostName = try c.decodeIfPresent(String.self, forKey: .hostName) ?? d.hostName
        dataDir = try c.decodeIfPresent(String.self, forKey: .dataDir) ?? d.dataDir
        tlsCertificate = try c.decodeIfPresent(String.self, forKey: .tlsCertificate)
        tlsKey = try c.decodeIfPresent(String.self, forKey: .tlsKey)
        clientCA = try c.decodeIfPresent(String.self, forKey: .clientCA)
        revokedCertificates = try c.decodeIfPresent(String.self, forKey: .revokedCertificates)
        tlsSubjectAltNames = try c.decodeIfPresent([String].self, forKey: .tlsSubjectAltNames) ?? d.tlsSubjectAltNames
        templateDirs = try c.decodeIfPresent([String].self, forKey: .templateDirs) ?? d.templateDirs
        diskDirs = try c.decodeIfPresent([String].self, forKey: .diskDirs) ?? d.diskDirs
        consoleLogDir = try c.decodeIfPresent(String.self, forKey: .consoleLogDir) ?? d.consoleLogDir
        shutdownTimeoutSeconds = try c.decodeIfPresent(Int.self, forKey: .shutdownTimeoutSeconds) ?? d.shutdownTimeoutSeconds
        hardLimitMode = try c.decodeIfPresent(String.self, forKey: .hardLimitMode) ?? d.hardLimitMode
        hostReservedMemoryMiB = try c.decodeIfPresent(Int.self, forKey: .hostReservedMemoryMiB) ?? d.hostReservedMemoryMiB
        guestCPUs = try c.decodeIfPresent(String.self, forKey: .guestCPUs)
        coreParking = try c.decodeIfPresent(Bool.self, forKey: .coreParking) ?? d.coreParking
        coreParkingTargetUtilization = try c.decodeIfPresent(Double.self, forKey: .coreParkingTargetUtilization) ?? d.coreParkingTargetUtilization
        coreParkingIntervalSeconds = try c.decodeIfPresent(Int.self, forKey: .coreParkingIntervalSeconds) ?? d.coreParkingIntervalSeconds
        offlineParkedCPUs = try c.decodeIfPresent(Bool.self, forKey: .offlineParkedCPUs) ?? d.offlineParkedCPUs
        uplink = try c.decodeIfPresent(String.self, forKey: .uplink)
    }

    /// Loads a config file; unknown fields and bad values are reported with their names.
    public static func load(path: String) throws -> AgentConfig {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        if let unknown = try JSONValue.firstUnknownKey(in: data, known: CodingKeys.allCases.map(\.rawValue)) {
            throw ConfigError("\(path): \(unknown): unknown field")
        }
        let config: AgentConfig
        do {
            config = try JSONDecoder().decode(AgentConfig.self, from: data)
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw ConfigError("\(path): \(ctx.codingPath.map(\.stringValue).joined(separator: ".")): wrong type")
        }
        try config.check()
        return config
    }

    public func check() throws {
        if !(1...65535).contains(port) { throw ConfigError("port: must be between 1 and 65535") }
        if !["auto", "kvm", "tcg"].contains(accelerator) { throw ConfigError("accelerator: must be auto, kvm or tcg") }
        if !["auto", "definition", "live"].contains(hardLimitMode) {
            throw ConfigError("hardLimitMode: must be auto, definition or live")
        }
        if shutdownTimeoutSeconds < 0 { throw ConfigError("shutdownTimeoutSeconds: must be at least 0") }
        if hostReservedMemoryMiB < 0 { throw ConfigError("hostReservedMemoryMiB: must be at least 0") }
        // At 1 a saturated CPU set could never grow: measured load cannot exceed the CPUs it runs on.
        if !(coreParkingTargetUtilization >= 0.1 && coreParkingTargetUtilization <= 0.9) {
            throw ConfigError("coreParkingTargetUtilization: must be between 0.1 and 0.9")
        }
        if !(1...3600).contains(coreParkingIntervalSeconds) { throw ConfigError("coreParkingIntervalSeconds: must be between 1 and 3600") }
        if offlineParkedCPUs && !coreParking { throw ConfigError("offlineParkedCPUs: needs coreParking") }
        if let g = guestCPUs, CPUList.parse(g) == nil { throw ConfigError("guestCPUs: must be a CPU list such as 0-3,6") }
        if let u = uplink, !VMSpec.isInterfaceName(u) { throw ConfigError("uplink: must be a Linux interface name") }
        for (key, dirs) in [("templateDirs", templateDirs), ("diskDirs", diskDirs)] {
            if let (i, bad) = dirs.enumerated().first(where: { !$0.element.hasPrefix("/") || $0.element == "/" }) {
                throw ConfigError("\(key)[\(i)]: \(bad) must be an absolute directory other than /")
            }
        }
    }
}

public struct ConfigError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Facts about this host that decide how guests run.
public enum HostFacts {
    /// `auto` picks KVM only where /dev/kvm opens and the CPU flags show vmx or svm (nested KVM without
    /// them crawls); otherwise TCG.
    public static func accelerator(setting: String) -> String {
        switch setting {
        case "kvm", "tcg": return setting
        default:
            let fd = open("/dev/kvm", O_RDWR)
            guard fd >= 0 else { return "tcg" }
            close(fd)
            let cpuinfo = TextFile.read("/proc/cpuinfo") ?? ""
            let flags = cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") } ?? ""
            let words = Set(flags.split(separator: " "))
            return words.contains("vmx") || words.contains("svm") ? "kvm" : "tcg"
        }
    }

    /// Whether this process holds CAP_SYS_RESOURCE (libvirt needs it to raise QEMU's memlock limit when
    /// a hard limit is part of the definition).
    public static func hasSysResource() -> Bool {
        guard let status = TextFile.read("/proc/self/status"),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
            let caps = UInt64(line.dropFirst(7).trimmed, radix: 16)
        else { return false }
        return caps & (1 << 24) != 0
    }
}
