import ArgumentParser
import FoundationEssentials
import HostAgent
import Logging
import ServerSupport
import ServiceLifecycle
import TLSSupport

@main
struct AgentMain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsphere-agent",
        abstract: "Per-host agent: drives this host's libvirtd and serves the controller over HTTPS.",
        version: HostAgent.version)

    @Option(help: "Config file (JSON). Missing is fine at the default path.")
    var config: String = "/etc/vsphere/agent.json"
    @Option(help: "Address to listen on.") var listen: String?
    @Option(help: "HTTPS port.") var port: Int?
    @Option(name: .customLong("libvirt-uri"), help: "libvirt URI, e.g. qemu:///system.") var libvirtURI: String?
    @Option(help: "auto, kvm or tcg.") var accelerator: String?
    @Option(name: .customLong("data-dir"), help: "State directory (TLS identity).") var dataDir: String?
    @Option(name: .customLong("console-log-dir"), help: "Where serial consoles are logged.") var consoleLogDir: String?
    @Option(name: .customLong("host-name"), help: "Host name to report.") var hostName: String?
    @Option(name: .customLong("tls-cert"), help: "Certificate chain issued by the cluster CA (default DATA_DIR/tls/agent.crt).") var tlsCert: String?
    @Option(name: .customLong("tls-key"), help: "Its private key (default DATA_DIR/tls/agent.key).") var tlsKey: String?
    @Option(name: .customLong("client-ca"), help: "The cluster CA; only clients it certified are served (default DATA_DIR/tls/cluster-ca.crt).")
    var clientCA: String?
    @Option(name: .customLong("tls-san"), help: "Name or address this agent is reached by (repeatable; documentation for its certificate).")
    var tlsSAN: [String] = []
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error.") var logLevel: String = "info"

    func run() async throws {
        var cfg = AgentConfig()
        if FileManager.default.fileExists(atPath: config) {
            do { cfg = try AgentConfig.load(path: config) } catch { throw ValidationError("\(error)") }
        } else if config != "/etc/vsphere/agent.json" {
            throw ValidationError("--config: \(config) does not exist")
        }
        if let listen { cfg.listen = listen }
        if let port { cfg.port = port }
        if let libvirtURI { cfg.libvirtURI = libvirtURI }
        if let accelerator { cfg.accelerator = accelerator }
        if let dataDir { cfg.dataDir = dataDir }
        if let consoleLogDir { cfg.consoleLogDir = consoleLogDir }
        if let hostName { cfg.hostName = hostName }
        if let tlsCert { cfg.tlsCertificate = tlsCert }
        if let tlsKey { cfg.tlsKey = tlsKey }
        if let clientCA { cfg.clientCA = clientCA }
        cfg.tlsSubjectAltNames += tlsSAN
        do { try cfg.check() } catch { throw ValidationError("\(error)") }
        guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("--log-level: unknown level \(logLevel)") }

        LoggingSystem.bootstrap { label in
            var h = DaemonLogHandler(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "vsphere-agent")
        let hub = EventHub()
        let agent = HostAgent(config: cfg, hub: hub, logger: logger)
        // Mutual TLS only: the agent's identity and the cluster CA must be there before it serves.
        for (what, path) in [("certificate", cfg.certificatePath), ("key", cfg.keyPath), ("cluster CA", cfg.clientCAPath)]
        where !FileManager.default.fileExists(atPath: path) {
            throw ValidationError("""
                no TLS \(what) at \(path): the agent serves only mutual TLS with the cluster CA. Issue this host's \
                identity on the controller (`vsphere-controller issue --name HOST --san ADDRESS --out DIR`, then copy DIR \
                to \(cfg.dataDir)/tls) or set tlsCertificate, tlsKey and clientCA
                """)
        }
        let identity = TLSIdentity(certificatePath: cfg.certificatePath, keyPath: cfg.keyPath, caPath: cfg.clientCAPath)
        let gate = try ClientGate(caPath: cfg.clientCAPath, revokedPath: cfg.revokedCertificatesPath, logger: logger)
        let ready = Readiness()
        let app = try AgentServer.application(
            agent: agent, tls: try identity.mutualServerConfiguration(clientCA: cfg.clientCAPath), gate: gate, logger: logger,
            onRunning: { ready.signal() })
        logger.info("vsphere-agent starting", metadata: [
            "listen": "\(cfg.listen):\(cfg.port)", "libvirt": "\(cfg.libvirtURI)", "accelerator": "\(agent.accelerator)",
            "certificate": "\(identity.certificatePath)", "clientCA": "\(cfg.clientCAPath)",
        ])
        // Shutdown runs in reverse order: the supervisor ends the event streams first, then the server drains.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: app), .init(service: agent.supervisor), .init(service: SystemdNotifier(logger: logger) { await ready.wait() }),
        ]
        if cfg.coreParking { services.append(.init(service: CoreParker(agent: agent))) }
        let group = ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        logger.info("vsphere-agent stopped")
    }
}
