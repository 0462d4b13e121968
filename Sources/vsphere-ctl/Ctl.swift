import ArgumentParser
import Foundation

struct Ctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsphere-ctl",
        abstract: "The vsphere CLI. validate and simulate work offline; the rest talks to the controller.",
        version: "0.1.0",
        subcommands: [
            Validate.self, Plan.self, Apply.self, Get.self, Describe.self, Delete.self, VMCommand.self, VolumeCommand.self, MigrationCommand.self, Events.self,
            DRSCommand.self, DPMCommand.self, HostCommand.self, Simulate.self, ValidateVM.self, TokenCommand.self, AuditCommand.self, AlarmCommand.self, ComplianceCommand.self,
        ])
}

/// The contract's exit codes: 0 success, 1 operation failed, 2 bad input or usage, 3 not found.
enum Exit {
    static let failed: Int32 = 1
    static let badInput: Int32 = 2
    static let notFound: Int32 = 3
}

@main
enum Main {
    static func main() async {
        do {
            var command = try Ctl.parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let code = Ctl.exitCode(for: error)
            let message = Ctl.fullMessage(for: error)
            if code == .success {
                if !message.isEmpty { print(message) }
                exit(0)
            }
            if !message.isEmpty { FileHandle.standardError.write(Data((message + "\n").utf8)) }
            // ArgumentParser says 64 for usage errors; the contract says 2.
            exit(code == .validationFailure ? Exit.badInput : code.rawValue)
        }
    }
}

func readInput(_ file: String) throws -> Data {
    if file == "-" { return FileHandle.standardInput.readDataToEndOfFile() }
    guard let data = FileManager.default.contents(atPath: file) else {
        FileHandle.standardError.write(Data("\(file): cannot read\n".utf8))
        throw ExitCode(Exit.badInput)
    }
    return data
}

func reportProblems(_ problems: [any CustomStringConvertible]) -> ExitCode {
    for p in problems { FileHandle.standardError.write(Data("\(p)\n".utf8)) }
    return ExitCode(Exit.badInput)
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json
}

func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}
