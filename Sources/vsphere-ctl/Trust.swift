import ArgumentParser
import ClusterModel
import ControllerAPI
import Foundation

/// `vsphere-ctl token create NAME --role R | list | revoke NAME` (admin).
struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Users' API tokens: create NAME --role viewer|operator|admin (the token is shown once), list, revoke NAME.")
    @OptionGroup var server: ServerOptions
    @Argument(help: "create, list or revoke") var action: String
    @Argument(help: "create/revoke: the user's name") var name: String?
    @Option(help: "create: viewer, operator or admin.") var role: String = "viewer"
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table

    func validate() throws {
        guard ["create", "list", "revoke"].contains(action) else { throw ValidationError("\(action): use create, list or revoke") }
        if action != "list" && (name ?? "").isEmpty { throw ValidationError("\(action) needs the user's name") }
        if Role(rawValue: role) == nil { throw ValidationError("--role: use viewer, operator or admin") }
    }

    func run() async throws {
        let client = try server.client()
        defer { Task { await client.close() } }
        switch action {
        case "create":
            let t: TokenView = try await client.call(.POST, "/v1/tokens", body: try JSONEncoder().encode(TokenRequest(name: name!, role: Role(rawValue: role)!)))
            if output == .json { return try printJSON(t) }
            print("token for \(t.name) (\(t.role.rawValue)), shown once:\n\(t.token ?? "")")
        case "revoke":
            let _: [String: String] = try await client.call(.DELETE, "/v1/tokens/\(name!)")
            print("tokens of \(name!) revoked")
        default:
            let all: [TokenView] = try await client.call(.GET, "/v1/tokens")
            if output == .json { return try printJSON(all) }
            table(["NAME", "ROLE", "CREATED", "REVOKED"], all.map {
                [$0.name, $0.role.rawValue, isoTime($0.createdMs), $0.revokedMs.map(isoTime) ?? "-"]
            })
        }
    }
}

/// `vsphere-ctl audit [verify]` (admin): the chained log of every change and who made it; `verify` has
/// the controller check every record's link and keyed hash (its key is not in the database, so a
/// database writer cannot forge a consistent tail).
struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "The audit log (who changed what, refused attempts included); `audit verify` checks its hash chain.")
    @OptionGroup var server: ServerOptions
    @Argument(help: "verify: check the hash chain") var action: String?
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table

    func validate() throws {
        if let action, action != "verify" { throw ValidationError("\(action): use verify, or nothing to list") }
    }

    func run() async throws {
        let client = try server.client()
        defer { Task { await client.close() } }
        guard action == "verify" else {
            let records: [AuditRecord] = try await client.call(.GET, "/v1/audit")
            if output == .json { return try printJSON(records) }
            table(["ID", "TIME", "WHO", "ROLE", "CALL", "STATUS"], records.map {
                [String($0.id), isoTime($0.timeMs), $0.actor, $0.role, "\($0.method) \($0.path)", String($0.status)]
            })
            return
        }
        // The whole log, verified where its key is (the controller's data directory, not its database).
        let verdict: AuditChain.Verdict = try await client.call(.GET, "/v1/audit/verify")
        if output == .json { try printJSON(verdict) } else if verdict.ok {
            print("audit log intact: \(verdict.records) records, head \(verdict.head)")
        } else {
            print("audit log TAMPERED: \(verdict.reason ?? "?")")
        }
        if !verdict.ok { throw ExitCode(Exit.failed) }
    }
}

func isoTime(_ ms: Int64) -> String {
    ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
}

/// `vsphere-ctl alarm ack ID` (operator).
struct AlarmCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "alarm", abstract: "Acknowledge an alarm (`get alarms` lists them): it stays open until its condition clears.")
    @OptionGroup var server: ServerOptions
    @Argument(help: "ack") var action: String
    @Argument(help: "the alarm's number") var id: Int64

    func validate() throws {
        if action != "ack" { throw ValidationError("\(action): use ack") }
    }

    func run() async throws {
        let client = try server.client()
        defer { Task { await client.close() } }
        let _: [String: Int64] = try await client.call(.POST, "/v1/alarms/\(id)/ack")
        print("alarm \(id) acknowledged")
    }
}

/// `vsphere-ctl compliance [-f FILE]`: the compliance rules (`settings.compliance`) over the controller's
/// desired state, or over a manifest offline; exit 1 when a VM breaks one.
struct ComplianceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compliance",
        abstract: "Check the compliance rules of settings.compliance over the desired state (or a manifest with -f, offline); exit 1 on violations.")
    @OptionGroup var server: ServerOptions
    @Option(name: .shortAndLong, help: "A manifest to check offline instead of the controller's desired state.") var file: String?
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table

    func run() async throws {
        let report: Compliance.Report
        if let file {
            report = Compliance.evaluate(try loadManifest(file))
        } else {
            let client = try server.client()
            defer { Task { await client.close() } }
            report = try await client.call(.GET, "/v1/compliance")
        }
        if output == .json {
            try printJSON(report)
        } else if report.rules.isEmpty {
            print("no compliance rules (settings.compliance) to check")
        } else if report.compliant {
            print("compliant: \(report.vms) VMs, rules \(report.rules.joined(separator: ", "))")
        } else {
            table(["VM", "RULE", "PROBLEM"], report.violations.map { [$0.vm, $0.rule, $0.message] })
            print("\(report.violations.count) violations in \(Set(report.violations.map(\.vm)).count) of \(report.vms) VMs")
        }
        if !report.compliant { throw ExitCode(Exit.failed) }
    }
}
