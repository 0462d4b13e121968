import ArgumentParser
import Controller
import Foundation
import Logging
import ServiceLifecycle
import Store
import TLSSupport

@main
struct ControllerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsphere-controller",
        abstract: "The cluster controller: manifests in, placed and running VMs out.",
        version: "0.1.0")

    @Option(help: "Address to listen on.") var listen: String = "0.0.0.0"
    @Option(help: "HTTPS port.") var port: Int = 8443
    @Option(help: "State store: a SQLite file path (default) or postgres://... (next change).")
    var database: String = "/var/lib/vsphere/controller/state.db"
    @Option(name: .customLong("data-dir"), help: "State directory (TLS identity).") var dataDir: String = "/var/lib/vsphere/controller"
    @Option(name: .customLong("agent-ca"), help: "CA certificate that agents' certificates chain to (repeatable).")
    var agentCA: [String] = []
    @Option(name: .customLong("tls-san"), help: "Extra name or address for the generated certificate (repeatable).")
    var tlsSAN: [String] = []
    @Option(name: .customLong("reconcile-interval"), help: "Seconds between reconcile passes.") var reconcileInterval: Double = 2
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error.") var logLevel: String = "info"

    func validate() throws {
        if !(1...65535).contains(port) { throw ValidationError("--port: must be between 1 and 65535") }
        if !(reconcileInterval >= 0.1 && reconcileInterval <= 3600) { throw ValidationError("--reconcile-interval: must be between 0.1 and 3600") }
        if Logger.Level(rawValue: logLevel) == nil { throw ValidationError("--log-level: unknown level \(logLevel)") }
        for ca in agentCA where !FileManager.default.fileExists(atPath: ca) { throw ValidationError("--agent-ca: \(ca) does not exist") }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "vsphere-controller")
        let store = try await Store.open(database, logger: logger)
        let agents = try AgentClient(trustedCAs: agentCA)
        let controller = Controller(store: store, agents: agents, logger: logger)
        let loop = ReconcileLoop(controller: controller, interval: .milliseconds(Int(reconcileInterval * 1000)))
        let migrations = MigrationLoop(controller: controller)
        var names = ["localhost", "127.0.0.1", ProcessInfo.processInfo.hostName] + tlsSAN
        if listen != "0.0.0.0" && listen != "::" { names.insert(listen, at: 0) }
        let identity = try TLSIdentity.loadOrCreate(dataDir: dataDir, names: names, prefix: "controller")
        let app = try ControllerServer.application(
            controller: controller, loop: loop, migrations: migrations, listen: listen, port: port, tls: try identity.serverConfiguration(), logger: logger)
        let schema = try await store.schemaVersion()
        logger.info("vsphere-controller starting", metadata: [
            "listen": "\(listen):\(port)", "database": "\(database)", "schema": "\(schema)",
            "certificate": "\(identity.certificatePath)",
        ])
        let collector = AgentEventCollector(controller: controller, loop: loop)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: app), .init(service: loop), .init(service: collector),
                           .init(service: migrations), .init(service: DRSLoop(controller: controller))],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch {
            // The HTTP client must be shut down before it goes, even when the server could not start.
            try? await agents.shutdown()
            try? await store.close()
            throw error
        }
        try await agents.shutdown()
        try await store.close()
        logger.info("vsphere-controller stopped")
    }
}
