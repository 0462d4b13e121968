import ArgumentParser
import ClusterModel
import ControllerAPI
import Foundation
import SystemFiles
import TLSSupport

/// `vsphere-ctl drs plan [-o json]` / `vsphere-ctl drs apply [--wait]`.
struct DRSCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drs",
        abstract: "Show what DRS (and DPM) would do now, with every move and non-move explained, or carry it out.",
        discussion: """
            plan: moves in execution order (batches run together), each with its reason and predicted time; the
            VMs and hosts left alone and why; host loads before and after; DPM's advice (hosts to power on or off).
            apply: carries the plan out as a job: batches of live migrations, then power actions; with --wait,
            follows it and exits 1 unless every action succeeded.
            """)
    @OptionGroup var server: ServerOptions
    @Argument(help: "plan or apply") var action: String
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table
    @Flag(help: "apply: wait until the job has finished.") var wait = false
    @Option(help: "apply --wait: give up after this many seconds.") var timeout = 1800

    func validate() throws {
        if !["plan", "apply"].contains(action) { throw ValidationError("\(action): use plan or apply") }
        if !(1...86_400).contains(timeout) { throw ValidationError("--timeout: must be between 1 and 86400") }
    }

    func run() async throws {
        let client = try server.client()
        defer { Task { await client.close() } }
        if action == "plan" {
            let p: DRSPlanView = try await client.call(.GET, "/v1/drs/plan")
            if output == .json { return try printJSON(p) }
            printPlan(p)
            return
        }
        let job: JobView = try await client.call(.POST, "/v1/drs/apply")
        try await followJob(client: client, job: job, wait: wait, json: output == .json, timeout: timeout)
    }

    func printPlan(_ p: DRSPlanView) {
        let tol = p.tolerance.map { " (tolerance \(fmt($0)), threshold \(p.migrationThreshold))" } ?? ""
        print("\(p.kind == "consolidate" ? "DPM consolidation" : "DRS balance") (automation \(p.automation)): imbalance \(fmt(p.imbalanceBefore)) → \(fmt(p.imbalanceAfter))\(tol)")
        if p.moves.isEmpty {
            print("no moves")
        } else {
            table(["BATCH", "VM", "FROM", "TO", "PREDICTED", "REASON"], p.moves.map {
                [String($0.batch), $0.vm, $0.from, $0.to, $0.predictedMs.map { "\($0) ms" } ?? "-", $0.reason]
            })
        }
        print("")
        table(["HOST", "CPU", "MEMORY", "CPU AFTER", "MEMORY AFTER"], p.loads.map {
            [$0.host, pct($0.cpu), pct($0.memory), $0.cpuAfter.map(pct) ?? "-", $0.memoryAfter.map(pct) ?? "-"]
        })
        print("\nDPM (\(p.power.automation)): \(p.power.advice): \(p.power.reason)")
        if !p.power.hostsToPowerOff.isEmpty { print("  power off: \(p.power.hostsToPowerOff.joined(separator: ", "))") }
        if !p.power.hostsToPowerOn.isEmpty { print("  power on: \(p.power.hostsToPowerOn.joined(separator: ", "))") }
        if !p.kept.isEmpty {
            print("\nleft alone:")
            for k in p.kept { print("  \(k.vm ?? k.host ?? "cluster"): \(k.reason)") }
        }
    }
}

/// `vsphere-ctl dpm status [-o json]`.
struct DPMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dpm", abstract: "Show DPM's settings, its advice now, and every host's power state and load.")
    @OptionGroup var server: ServerOptions
    @Argument(help: "status") var action: String
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table

    func validate() throws {
        if action != "status" { throw ValidationError("\(action): use status") }
    }

    func run() async throws {
        let client = try server.client()
        defer { Task { await client.close() } }
        let s: DPMStatusView = try await client.call(.GET, "/v1/dpm")
        if output == .json { return try printJSON(s) }
        print("DPM \(s.automation): target \(s.targetUtilization)% ± \(s.tolerance)%, wake after \(s.powerOnSustainSeconds) s high, pack after \(s.powerOffSustainSeconds) s low, \(s.spareHosts) spare hosts")
        print("now: \(s.advice): \(s.reason) (history \(Int(s.historySeconds)) s)\n")
        table(["HOST", "STATE", "POWER", "DRIVER", "CPU", "MEMORY", "SINCE", "BY", "NOTE"], s.hosts.map {
            [$0.host, $0.state, $0.power, $0.driver ?? "-", $0.cpu.map(pct) ?? "-", $0.memory.map(pct) ?? "-", $0.since ?? "-", $0.by ?? "-",
             $0.error ?? $0.reason ?? ""]
        })
    }
}

/// `vsphere-ctl host maintenance HOST on|off [--wait]`, `host join-token HOST`, `host join HOST ...`.
struct HostCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "host",
        abstract: "Maintenance mode, and joining hosts to the cluster.",
        discussion: """
            host maintenance HOST on|off [--wait]: `on` evacuates every VM (a VM that cannot move is reported and does not \
            block the others); `off` takes the host back.
            host join-token HOST [--ttl SECONDS]: a one-time token for a host of the desired state, and the cluster CA's fingerprint.
            host join HOST --join-token T --ca-fingerprint F --out DIR --server URL: run on the new host: makes its key, has the \
            controller sign it, writes DIR/agent.key, DIR/agent.crt and DIR/cluster-ca.crt for its agent.
            """)
    @OptionGroup var server: ServerOptions
    @Argument(help: "maintenance, join-token or join") var action: String
    @Argument(help: "the host") var host: String
    @Argument(help: "maintenance: on or off") var mode: String?
    @Flag(help: "on: wait until the evacuation has finished.") var wait = false
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table
    @Option(help: "--wait: give up after this many seconds.") var timeout = 1800
    @Option(help: "join-token: seconds the token is valid (60 to 604800).") var ttl: Int?
    @Option(name: .customLong("join-token"), help: "join: the one-time token (from join-token).") var joinToken: String?
    @Option(name: .customLong("ca-fingerprint"), help: "join: SHA-256 of the cluster CA (from join-token).") var caFingerprint: String?
    @Option(help: "join: directory for the agent's identity (its data directory's tls/).") var out: String?

    func validate() throws {
        if !["maintenance", "join-token", "join"].contains(action) { throw ValidationError("\(action): use maintenance, join-token or join") }
        if !Names.isValid(host) { throw ValidationError("\(host): not a host name") }
        switch action {
        case "maintenance":
            guard let mode, ["on", "off"].contains(mode) else { throw ValidationError("\(mode ?? "nothing"): use on or off") }
            if !(1...86_400).contains(timeout) { throw ValidationError("--timeout: must be between 1 and 86400") }
        case "join-token":
            if let ttl, !(60...604_800).contains(ttl) { throw ValidationError("--ttl: must be between 60 and 604800") }
        default:
            guard let joinToken, joinToken.count == 64, joinToken.allSatisfy(\.isHexDigit) else { throw ValidationError("--join-token: the 64 hex digits join-token printed") }
            guard let caFingerprint, caFingerprint.count == 64, caFingerprint.allSatisfy(\.isHexDigit) else {
                throw ValidationError("--ca-fingerprint: the 64 hex digits join-token printed")
            }
            if out == nil { throw ValidationError("--out: the directory for the agent's identity") }
        }
    }

    func run() async throws {
        switch action {
        case "join-token": return try await makeJoinToken()
        case "join": return try await join()
        default: break
        }
        let client = try server.client()
        defer { Task { await client.close() } }
        let r: MaintenanceResponse = try await client.call(
            .POST, "/v1/hosts/\(host)/maintenance", body: try JSONEncoder().encode(MaintenanceRequest(enabled: mode == "on")))
        guard let job = r.job else {
            if output == .json { return try printJSON(r.host) }
            print("\(host): \(r.host.state)")
            return
        }
        try await followJob(client: client, job: job, wait: wait, json: output == .json, timeout: timeout)
    }

    func makeJoinToken() async throws {
        let client = try server.client()
        defer { Task { await client.close() } }
        let t: JoinToken = try await client.call(.POST, "/v1/hosts/\(host)/join-token", body: try JSONEncoder().encode(JoinTokenRequest(ttlSeconds: ttl)))
        if output == .json { return try printJSON(t) }
        print("token:          \(t.token)")
        print("ca-fingerprint: \(t.caFingerprint)")
        print("expires:        \(ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(t.expiresMs) / 1000)))")
        print("On \(host): vsphere-ctl host join \(host) --server \((try? server.resolve().server) ?? "URL") --join-token \(t.token) --ca-fingerprint \(t.caFingerprint) --out /var/lib/vsphere/agent/tls")
    }

    /// The host's side: pin the CA by its fingerprint, then send a CSR over TLS verified by that CA.
    func join() async throws {
        let url = try server.resolve().server
        let probe = try ControllerClient(server: url, ca: nil, unverified: true)
        let ca: ClusterCAView
        do { ca = try await probe.call(.GET, "/v1/ca") } catch {
            await probe.close()
            throw error
        }
        await probe.close()
        let seen = try HostJoin.fingerprint(pem: ca.certificate)
        guard seen == caFingerprint!.lowercased() else {
            stderr("the controller at \(url) presents a CA with fingerprint \(seen), not \(caFingerprint!): not joining")
            throw ExitCode(Exit.failed)
        }
        let dir = out!
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let caPath = dir + "/cluster-ca.crt"
        try ca.certificate.write(toFile: caPath + ".new", atomically: true, encoding: .utf8)
        let request = try HostJoin.request(commonName: host)
        let client = try ControllerClient(server: url, ca: caPath + ".new")
        defer { Task { await client.close() } }
        let r: JoinResponse = try await client.call(
            .POST, "/v1/join", body: try JSONEncoder().encode(JoinRequest(host: host, token: joinToken!, csr: request.csr)))
        do { try TextFile.replace(dir + "/agent.key", request.key, mode: 0o600) } catch {
            stderr(error.description)
            throw ExitCode(Exit.failed)
        }
        try r.certificate.write(toFile: dir + "/agent.crt", atomically: true, encoding: .utf8)
        guard rename(caPath + ".new", caPath) == 0 else { stderr("cannot write \(caPath)"); throw ExitCode(Exit.failed) }
        if output == .json { return try printJSON(["certificate": dir + "/agent.crt", "key": dir + "/agent.key", "ca": caPath]) }
        print("\(host) joined: \(dir)/agent.crt, \(dir)/agent.key, \(caPath); (re)start its agent")
    }
}

/// Prints a job; with `wait`, polls it until it ends, printing each item as it finishes; exits 1 unless
/// every item succeeded.
func followJob(client: ControllerClient, job start: JobView, wait: Bool, json: Bool, timeout: Int) async throws {
    var job = start
    if !json {
        print("job \(job.id) (\(job.kind)\(job.host.map { " of \($0)" } ?? "")): \(job.items.count) actions")
        for n in job.notes { print("  \(n)") }
    }
    guard wait else {
        if json { try printJSON(job) }
        return
    }
    var reported = Set<Int>()
    var notes = job.notes.count
    let deadline = Date().addingTimeInterval(Double(timeout))
    while true {
        if !json {
            for (i, item) in job.items.enumerated() where !reported.contains(i) && !["pending", "running"].contains(item.state) {
                reported.insert(i)
                let what = item.action == "move" ? "\(item.vm ?? "?") \(item.from ?? "?") → \(item.to ?? "?")" : "\(item.action) \(item.host ?? "?")"
                print("  \(item.state): \(what)\(item.migration.map { " (\($0))" } ?? "")\(item.error.map { ": \($0)" } ?? "")")
            }
            for n in job.notes.dropFirst(notes) { print("  \(n)") }
            notes = job.notes.count
        }
        if job.isFinished { break }
        if Date() > deadline {
            stderr("timed out after \(timeout) s; job \(job.id) goes on")
            throw ExitCode(Exit.failed)
        }
        try await Task.sleep(for: .milliseconds(500))
        job = try await client.call(.GET, "/v1/jobs/\(job.id)")
    }
    if json { try printJSON(job) } else { print("job \(job.id): \(job.state)") }
    if job.state != "done" { throw ExitCode(Exit.failed) }
}

func pct(_ x: Double) -> String { "\(Int((x * 100).rounded()))%" }
func fmt(_ x: Double) -> String { String(format: "%.3f", x) }
