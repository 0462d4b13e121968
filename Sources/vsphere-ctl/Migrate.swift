import ArgumentParser
import ClusterModel
import ControllerAPI
import Foundation
import MigrationPolicy

/// `vsphere-ctl migration cancel NAME` / `vsphere-ctl migration describe NAME`.
struct MigrationCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migration", abstract: "Cancel or describe a live migration (NAME: m-ID or the VM's name).")
    @OptionGroup var server: ServerOptions
    @Argument(help: "cancel or describe") var action: String
    @Argument(help: "m-ID, or a VM (its latest migration)") var name: String
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table

    func validate() throws {
        if !["cancel", "describe"].contains(action) { throw ValidationError("\(action): use cancel or describe") }
        let isID = name.hasPrefix("m-") && Int(name.dropFirst(2)) != nil
        if !isID && !Names.isValid(name) { throw ValidationError("\(name): not a migration (m-ID) or VM name") }
    }

    func run() async throws {
        let client = try server.client()
        defer { Task { await client.close() } }
        let m: MigrationView = action == "cancel"
            ? try await client.call(.POST, "/v1/migrations/\(name)/cancel")
            : try await client.call(.GET, "/v1/migrations/\(name)")
        if output == .json { return try printJSON(m) }
        if action == "cancel" { print("migration \(m.name) of \(m.vm): cancel requested (\(m.state))") }
        describeMigration(m)
    }
}

/// Requests a migration; with `wait`, follows it (a progress bar on a tty) and exits 1 unless it completed.
func migrate(client: ControllerClient, vm: String, request: MigrateRequest, wait: Bool, json: Bool, timeout: Int) async throws {
    var m: MigrationView = try await client.call(.POST, "/v1/vms/\(vm)/migrate", body: try JSONEncoder().encode(request))
    if !json { print("migration \(m.name): \(m.vm) \(m.from) → \(m.to), policy \(m.policy.name) (\(m.state))") }
    guard wait else { return }
    let tty = isatty(1) == 1 && !json
    let deadline = Date().addingTimeInterval(Double(timeout))
    var printedSteps = m.steps.count
    while !m.isFinished {
        if Date() > deadline {
            if tty { print("") }
            stderr("timed out after \(timeout) s; the migration goes on (vsphere-ctl migration describe \(m.name))")
            throw ExitCode(Exit.failed)
        }
        try await Task.sleep(for: .milliseconds(500))
        m = try await client.call(.GET, "/v1/migrations/\(m.name)")
        if tty {
            FileHandle.standardOutput.write(Data(("\r\u{1B}[K" + progressLine(m)).utf8))
        } else if !json {
            // Without a tty: one line per policy step as it happens.
            for s in m.steps.dropFirst(printedSteps) { print("  step: +\(s.atMs) ms \(s.action): \(s.detail)") }
        }
        printedSteps = max(printedSteps, m.steps.count)
    }
    if tty { print("") }
    if json {
        try printJSON(m)
    } else {
        describeMigration(m)
    }
    if m.state != "completed" { throw ExitCode(Exit.failed) }
}

func progressLine(_ m: MigrationView) -> String {
    guard let p = m.progress else { return "\(m.name) \(m.state)..." }
    let width = 24
    let fraction = p.totalMiB > 0 ? min(1, max(0, 1 - p.remainingMiB / p.totalMiB)) : 0
    let filled = Int(fraction * Double(width))
    let eta = p.etaSeconds.map { String(format: "%.0fs", $0) } ?? "?"
    let step = p.step.map { " | \($0.prefix(48))" } ?? ""
    return "[\(String(repeating: "#", count: filled))\(String(repeating: ".", count: width - filled))] "
        + String(format: "%.0f MiB sent, %.0f MiB left, dirty %.1f MiB/s, iter %d, ETA %@", p.transferredMiB, p.remainingMiB, p.dirtyRateMiBps, p.iteration, eta)
        + step
}

func describeMigration(_ m: MigrationView) {
    func ms(_ v: Int64?) -> String { v.map { "\($0) ms" } ?? "-" }
    print("migration \(m.name): \(m.vm) \(m.from) → \(m.to)")
    print("  state:      \(m.state)\(m.error.map { " (\($0))" } ?? "")")
    print("  policy:     \(m.policy.name), budget \(m.policy.budgetSeconds) s\(m.bandwidthMiBps.map { ", cap \($0) MiB/s" } ?? "")")
    print("  storage:    \(m.storage)\(m.copyDisks.isEmpty ? "" : " (" + m.copyDisks.joined(separator: ", ") + ")")")
    if let p = m.predicted {
        print("  predicted:  \(p.totalMs) ms, downtime \(p.downtimeMs) ms, \(p.bytes >> 20) MiB, \(p.outcome) (dirty \(p.dirtyRate >> 20) MiB/s, link \(p.bandwidth >> 20) MiB/s)")
    }
    if m.state == "completed" {
        print("  actual:     \(ms(m.totalMs)), downtime \(ms(m.downtimeMs)), \((m.bytes ?? 0) >> 20) MiB")
    }
    for s in m.steps { print("  step:       +\(s.atMs) ms (iteration \(s.iteration)) \(s.action): \(s.detail)") }
}

func printMigrations(_ ms: [MigrationView]) {
    func t(_ v: Int64?) -> String { v.map(String.init) ?? "-" }
    table(
        ["NAME", "VM", "FROM", "TO", "STATE", "POLICY", "PREDICTED MS", "ACTUAL MS", "PRED DOWNTIME", "DOWNTIME", "MIB"],
        ms.map {
            [$0.name, $0.vm, $0.from, $0.to, $0.state, $0.policy.name, t($0.predicted?.totalMs), t($0.totalMs),
             t($0.predicted?.downtimeMs), t($0.downtimeMs), $0.bytes.map { String($0 >> 20) } ?? "-"]
        })
}
