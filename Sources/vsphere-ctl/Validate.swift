import ArgumentParser
import ClusterModel
import Foundation

/// `vsphere-ctl validate -f FILE`: schema and internal consistency, offline.
struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a cluster manifest offline: every problem with its JSON path; exit 2 if any.")

    @Option(name: .shortAndLong, help: "Manifest (JSON), or - for standard input.") var file: String
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table

    func run() throws {
        let data = try readInput(file)
        do {
            let m = try ClusterManifest.decodeValidated(data)
            if output == .json {
                try printJSON(["valid": true])
            } else {
                let name = m.metadata?.name ?? "(unnamed)"
                print("\(name): valid (\(m.hosts?.count ?? 0) hosts, \(m.vms?.count ?? 0) VMs, \(m.resourcePools?.count ?? 0) resource pools)")
            }
        } catch let failure as ValidationFailure {
            if output == .json { try printJSON(["valid": false]) }
            throw reportProblems(failure.problems)
        }
    }
}

/// Validates a single VM spec offline (what an agent accepts).
struct ValidateVM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate-vm", abstract: "Validate one VM spec (JSON) offline; exit 2 on problems.")

    @Option(name: .shortAndLong, help: "VM spec file (JSON).") var file: String

    func run() throws {
        let data = try readInput(file)
        do {
            let spec = try VMSpec.decodeValidated(data)
            print("\(spec.name): valid")
        } catch let failure as ValidationFailure {
            throw reportProblems(failure.problems)
        }
    }
}
