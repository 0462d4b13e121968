import ArgumentParser

@main
struct ControllerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsphere-controller",
        abstract: "The cluster controller (manifests, placement, reconcile). Arrives with the controller issue.",
        version: "0.1.0")

    func run() throws {
        print("vsphere-controller: the controller arrives with the next issue (manifests, placement, reconcile).")
        print("Today: run vsphere-agent on each host; see docs/operations.md.")
    }
}
