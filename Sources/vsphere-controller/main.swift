import ArgumentParser
import Controller
import Foundation
import Logging
import ServerSupport
import ServiceLifecycle
import Store
import SystemFiles
import TLSSupport

@main
struct ControllerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsphere-controller",
        abstract: "The cluster controller: manifests in, placed and running VMs out.",
        version: "0.1.0",
        subcommands: [Serve.self, Init.self, Issue.self, Revoke.self],
        defaultSubcommand: Serve.self)
}

/// The cluster CA and the controller's own identity under DATA_DIR (pki/ and tls/).
struct PKIOptions: ParsableArguments {
    @Option(name: .customLong("data-dir"), help: "State directory (the cluster CA in pki/, the controller's identity in tls/).")
    var dataDir: String = "/var/lib/vsphere/controller"

    var pkiDir: String { dataDir + "/pki" }
    var tlsDir: String { dataDir + "/tls" }

    /// The controller's identity, (re)issued by the cluster CA when missing, issued by another CA, missing
    /// a name or the controller role (certificates made before roles existed), or within 30 days of expiry.
    func controllerIdentity(_ ca: ClusterCA, names: [String]) throws -> TLSIdentity {
        let cert = tlsDir + "/controller.crt"
        var fresh = false
        if let text = try? String(contentsOfFile: cert, encoding: .utf8), text.contains(ca.certificatePEM.trimmingCharacters(in: .whitespacesAndNewlines)),
            let leaf = ClusterCA.leaf(ofPEMFile: cert), leaf.notValidAfter.timeIntervalSinceNow > 30 * 86400,
            IdentityRole(of: leaf) == .controller,
            let known = try? String(contentsOfFile: tlsDir + "/controller.names", encoding: .utf8), known == names.joined(separator: "\n")
        {
            fresh = true
        }
        if !fresh {
            _ = try ca.write(try ca.issue(commonName: "vsphere-controller", names: names, role: .controller), to: tlsDir, prefix: "controller")
            try names.joined(separator: "\n").write(toFile: tlsDir + "/controller.names", atomically: true, encoding: .utf8)
        }
        // The CLI's config names this file: it is the cluster CA.
        try ca.certificatePEM.write(toFile: tlsDir + "/controller-ca.crt", atomically: true, encoding: .utf8)
        return TLSIdentity(certificatePath: cert, keyPath: tlsDir + "/controller.key", caPath: ca.certificatePath)
    }
}

/// `vsphere-controller init`: creates the cluster CA (once) and prints where it is.
struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create the cluster CA (once) under DATA_DIR/pki.")
    @OptionGroup var pki: PKIOptions

    func run() throws {
        let ca = try ClusterCA.loadOrCreate(directory: pki.pkiDir)
        print("cluster CA: \(ca.certificatePath)")
        print("valid until: \(ISO8601DateFormatter().string(from: ca.certificate.notValidAfter))")
    }
}

/// `vsphere-controller issue`: an identity signed by the cluster CA, for an agent, an operator or a tool.
struct Issue: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Issue a certificate and key signed by the cluster CA (for an agent: --name HOST --san ADDRESS --out DIR --prefix agent).",
        discussion: """
            --role host (the default) is a host's identity: its agent's server certificate and libvirt's and QEMU's \
            for migrations; it cannot call agents. --role operator is a client allowed to call agents directly \
            (scripts, break-glass access); --role controller is the controller's own (it issues it itself).
            """)
    @OptionGroup var pki: PKIOptions
    @Option(help: "Common name: the host's name for an agent.") var name: String
    @Option(help: "Extra DNS name or IP address (repeatable).") var san: [String] = []
    @Option(help: "Directory to write PREFIX.crt, PREFIX.key and cluster-ca.crt into.") var out: String
    @Option(help: "File name prefix.") var prefix: String = "agent"
    @Option(help: "Validity in days.") var days: Int = 365
    @Option(help: "host, operator or controller.") var role: String = "host"

    func validate() throws {
        if name.isEmpty || name.count > 253 || name.contains(where: { $0 == "/" || $0.isWhitespace }) {
            throw ValidationError("--name: must be a host name")
        }
        if !prefix.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }) || prefix.isEmpty { throw ValidationError("--prefix: letters, digits and - only") }
        if !(1...3650).contains(days) { throw ValidationError("--days: must be between 1 and 3650") }
        if IdentityRole(rawValue: role) == nil { throw ValidationError("--role: must be host, operator or controller") }
    }

    func run() throws {
        let ca = try ClusterCA.loadOrCreate(directory: pki.pkiDir)
        let id = try ca.write(try ca.issue(commonName: name, names: san, role: IdentityRole(rawValue: role)!, days: days), to: out, prefix: prefix)
        print("\(id.certificatePath)\n\(id.keyPath)\n\(id.caPath ?? "")")
    }
}

/// `vsphere-controller revoke`: adds a certificate's serial number to the cluster's revocation list
/// (`pki/revoked.txt`); the running controller gives it to every agent at its next pass.
struct Revoke: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Revoke a cluster certificate: agents refuse it in the TLS handshake from the controller's next pass on.")
    @OptionGroup var pki: PKIOptions
    @Option(help: "The certificate's serial number in hexadecimal (as `openssl x509 -noout -serial` prints it).") var serial: String?
    @Option(help: "The certificate file (PEM) to revoke, instead of --serial.") var certificate: String?

    func validate() throws {
        if (serial == nil) == (certificate == nil) { throw ValidationError("--serial or --certificate: give exactly one") }
        if let serial, ClientAuthorizer.serialNumber(serial) == nil {
            throw ValidationError("--serial: must be a certificate serial number, hexadecimal (at most 20 bytes)")
        }
        if let certificate, ClusterCA.leaf(ofPEMFile: certificate) == nil { throw ValidationError("--certificate: \(certificate) holds no PEM certificate") }
    }

    func run() throws {
        let ca = try ClusterCA.load(directory: pki.pkiDir)
        let s: String
        if let certificate {
            let leaf = ClusterCA.leaf(ofPEMFile: certificate)!
            guard leaf.issuer == ca.certificate.subject else { throw ValidationError("--certificate: not issued by this cluster CA") }
            s = ClientAuthorizer.serial(of: leaf)
        } else {
            s = ClientAuthorizer.serialNumber(serial!)!
        }
        let path = pki.pkiDir + "/revoked.txt"
        var text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? "# serial numbers of revoked cluster certificates\n"
        if !ClientAuthorizer.parseRevoked(text).contains(s) {
            text += s + "\n"
            do { try ClusterCA.replace(path, text, mode: 0o644) } catch { throw ValidationError("cannot replace \(path)") }
        }
        print("revoked \(s) (\(path))")
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the controller (the default).")

    @Option(help: "Address to listen on.") var listen: String = "0.0.0.0"
    @Option(help: "HTTPS port.") var port: Int = 8443
    @Option(help: "State store: a SQLite file path (default) or postgres://user@host:port/db. A URL with a password belongs in --database-file or VSPHERE_DATABASE_URL, not here (every process sees a command line).")
    var database: String?
    @Option(name: .customLong("database-file"), help: "File holding the store's URL or path (e.g. a systemd credential: LoadCredential=).")
    var databaseFile: String?
    @OptionGroup var pki: PKIOptions
    @Option(name: .customLong("agent-ca"), help: "Another CA agents' server certificates may chain to (repeatable; the cluster CA always counts).")
    var agentCA: [String] = []
    @Option(name: .customLong("tls-san"), help: "Extra name or address for the controller's certificate (repeatable).")
    var tlsSAN: [String] = []
    @Option(name: .customLong("power-config"), help: "The power drivers' commands and credentials (JSON, owned by root or the controller's user; default /etc/vsphere/power.json when present).")
    var powerConfig: String?
    @Option(name: .customLong("open-rate-limit"), help: "Requests a second each client may make without valid credentials (health, CA, join, failed sign-ins); bursts of five times that.")
    var openRateLimit: Double = 20
    @Option(name: .customLong("reconcile-interval"), help: "Seconds between reconcile passes.") var reconcileInterval: Double = 2
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error.") var logLevel: String = "info"

    func validate() throws {
        if !(1...65535).contains(port) { throw ValidationError("--port: must be between 1 and 65535") }
        if !(reconcileInterval >= 0.1 && reconcileInterval <= 3600) { throw ValidationError("--reconcile-interval: must be between 0.1 and 3600") }
        if Logger.Level(rawValue: logLevel) == nil { throw ValidationError("--log-level: unknown level \(logLevel)") }
        for ca in agentCA where !FileManager.default.fileExists(atPath: ca) { throw ValidationError("--agent-ca: \(ca) does not exist") }
        if !(openRateLimit >= 1 && openRateLimit <= 1_000_000) { throw ValidationError("--open-rate-limit: must be between 1 and 1000000") }
        if database != nil && databaseFile != nil { throw ValidationError("--database and --database-file: give one of them") }
    }

    /// The store's URL or path: --database, else --database-file, else VSPHERE_DATABASE_URL, else the
    /// SQLite default.
    func databaseURL() throws -> String {
        if let database { return database }
        if let databaseFile {
            guard let text = TextFile.read(databaseFile, limit: 64 << 10) else { throw ValidationError("--database-file: cannot read \(databaseFile)") }
            let url = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if url.isEmpty { throw ValidationError("--database-file: \(databaseFile) is empty") }
            return url
        }
        if let env = ProcessInfo.processInfo.environment["VSPHERE_DATABASE_URL"], !env.isEmpty { return env }
        return "/var/lib/vsphere/controller/state.db"
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var h = DaemonLogHandler(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "vsphere-controller")
        let database = try databaseURL()
        if self.database.map(Store.hasPassword) == true {
            logger.warning("--database carries a password, which every user of this host can read in the process list; use --database-file or VSPHERE_DATABASE_URL")
        }
        // The cluster CA (made on first start) issues the controller's identity: it serves the CLI with
        // it and presents it to agents, which accept nothing else.
        let ca = try ClusterCA.loadOrCreate(directory: pki.pkiDir)
        var names = ["localhost", "127.0.0.1", ProcessInfo.processInfo.hostName] + tlsSAN
        if listen != "0.0.0.0" && listen != "::" { names.insert(listen, at: 0) }
        let identity = try pki.controllerIdentity(ca, names: names)
        let power: PowerConfig
        do { power = try PowerConfig.load(path: powerConfig ?? "/etc/vsphere/power.json", required: powerConfig != nil) } catch {
            throw ValidationError("--power-config: \(error)")
        }
        let store = try await Store.open(database, logger: logger)
        // The audit chain's key lives beside the CA, not in the store it protects.
        let auditKey: AuditKey
        do { auditKey = try AuditKey.loadOrCreate(path: pki.dataDir + "/audit.key", nextID: try await store.lastAuditID() + 1) } catch {
            try? await store.close()
            throw error
        }
        let agents = try AgentClient(tls: identity.clientConfiguration(trusting: ca.certificatePath, also: agentCA))
        let controller = Controller(store: store, agents: agents, logger: logger, ca: ca, controllerNames: names + ["vsphere-controller"], power: power, auditKey: auditKey,
            openRequestsPerSecond: openRateLimit)
        // Every API call needs a token: the first admin's is written next to the state, once.
        let tokenFile = pki.dataDir + "/admin.token"
        if try await controller.bootstrapAdmin(tokenFile: tokenFile) {
            logger.notice("first admin token written", metadata: ["file": "\(tokenFile)"])
        }
        let loop = ReconcileLoop(controller: controller, interval: .milliseconds(Int(reconcileInterval * 1000)))
        let migrations = MigrationLoop(controller: controller)
        let ready = Readiness()
        let app = try ControllerServer.application(
            controller: controller, loop: loop, migrations: migrations, listen: listen, port: port, tls: try identity.serverConfiguration(), logger: logger,
            onRunning: { ready.signal() })
        let schema = try await store.schemaVersion()
        logger.info("vsphere-controller starting", metadata: [
            "listen": "\(listen):\(port)", "database": "\(Store.redacted(database))", "schema": "\(schema)",
            "certificate": "\(identity.certificatePath)", "clusterCA": "\(ca.certificatePath)",
        ])
        let collector = AgentEventCollector(controller: controller, loop: loop)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: app), .init(service: loop), .init(service: collector),
                           .init(service: migrations), .init(service: DRSLoop(controller: controller)),
                           .init(service: SystemdNotifier(logger: logger) { await ready.wait() })],
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
