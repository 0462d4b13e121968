import ArgumentParser
import ClusterModel
import Foundation

@main
struct Ctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsphere-ctl",
        abstract: "The vsphere CLI. Talks to the controller (arrives with the controller issue).",
        version: "0.1.0",
        subcommands: [ValidateVM.self])
}

/// Validates a single VM spec offline (the cluster manifest's validate arrives with the controller).
struct ValidateVM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate-vm", abstract: "Validate one VM spec (JSON) offline; exit 2 on problems.")

    @Option(name: .shortAndLong, help: "VM spec file (JSON).") var file: String

    func run() throws {
        guard let data = FileManager.default.contents(atPath: file) else {
            FileHandle.standardError.write(Data("\(file): cannot read\n".utf8))
            throw ExitCode(2)
        }
        do {
            let spec = try VMSpec.decodeValidated(data)
            print("\(spec.name): valid")
        } catch {
            for p in error.problems { FileHandle.standardError.write(Data("\(p)\n".utf8)) }
            throw ExitCode(2)
        }
    }
}
