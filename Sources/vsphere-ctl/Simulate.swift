import ArgumentParser
import ClusterModel
import Foundation
import Placement
import Planner

/// A cluster file for simulate: validated, every host with a capacity. Problems exit 2, naming their path.
func simulatedCluster(_ file: String) throws -> ClusterManifest {
    let manifest: ClusterManifest
    do {
        manifest = try ClusterManifest.decodeValidated(try readInput(file))
    } catch let failure as ValidationFailure {
        throw reportProblems(failure.problems)
    }
    if let i = manifest.hosts?.firstIndex(where: { $0.capacity == nil }) {
        throw reportProblems(["hosts[\(i)].capacity: is required by simulate"])
    }
    return manifest
}

/// Milliseconds since `start`, to the microsecond.
func milliseconds(since start: ContinuousClock.Instant) -> Double {
    let elapsed = ContinuousClock.now - start
    let ms = Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
    return (ms * 1000).rounded() / 1000
}

struct Simulate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the real scheduler on a described cluster, in this process (capacity planning).",
        subcommands: [SimulatePlace.self, SimulateConsolidate.self])
}

/// `vsphere-ctl simulate place`: like Ganeti's hspace, how many VMs of a size fit, and where.
struct SimulatePlace: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "place",
        abstract: "Place K VMs of one size (or as many as fit) on the hosts of a cluster file.")

    @Option(name: .shortAndLong, help: "Cluster file: hosts with capacity, VMs with host for what already runs.") var file: String
    @Option(name: .customLong("vm-cpus"), help: "vCPUs of each new VM.") var vmCPUs: Int
    @Option(name: .customLong("vm-memory-mib"), help: "Memory of each new VM (MiB).") var vmMemoryMiB: Int
    @Option(help: "How many VMs; without it, as many as fit.") var count: Int?
    @Option(help: "spread or pack (default: the file's setting, else spread).") var strategy: String?
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table

    struct Output: Encodable {
        var placed: Int
        var unplaced: Int
        var hostsUsed: Int
        var elapsedMs: Double
        var strategy: String
        var limitedBy: String?
        var placements: [PlacementResult.Placement]
        var unplacedVMs: [PlacementResult.Unplaced]
    }

    func validate() throws {
        var problems: [String] = []
        if vmCPUs < 1 { problems.append("--vm-cpus: must be at least 1") }
        if vmMemoryMiB < 16 { problems.append("--vm-memory-mib: must be at least 16") }
        if let count, count < 0 || count > 10_000_000 { problems.append("--count: must be between 0 and 10000000") }
        if let strategy, Strategy(rawValue: strategy) == nil { problems.append("--strategy: must be spread or pack") }
        if !problems.isEmpty { throw ValidationError(problems.joined(separator: "\n")) }
    }

    func run() throws {
        let manifest = try simulatedCluster(file)
        let chosen = strategy.flatMap(Strategy.init(rawValue:)) ?? ClusterSnapshot.strategy(manifest)
        let scheduler = Scheduler(strategy: chosen)
        let start = ContinuousClock.now
        let (base, _, pending) = ClusterSnapshot.state(manifest)
        var state = base
        var placements: [PlacementResult.Placement] = []
        var unplaced: [PlacementResult.Unplaced] = []
        // The file's own pending VMs first, then the new ones.
        let first = scheduler.place(Scheduler.ordered(pending), on: state)
        state = first.state
        placements += first.placements
        unplaced += first.unplaced
        var limitedBy: String?
        let width = max(5, String(count ?? 99_999).count)
        func simName(_ n: Int) -> String {
            let digits = String(n)
            return "sim-" + String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        var i = 0
        while count.map({ i < $0 }) ?? true {
            i += 1
            let name = simName(i)
            let vm = PlacementVM(name: name, cpus: vmCPUs, memoryMiB: vmMemoryMiB)
            guard let h = scheduler.choose(vm, state: state) else {
                let why = scheduler.explain(vm, state: state)
                limitedBy = why.summary
                if let count {
                    // Identical VMs: once one does not fit, none of the rest does.
                    unplaced.append(why)
                    if i < count {
                        for j in (i + 1)...count { unplaced.append(PlacementResult.Unplaced(vm: simName(j), reasons: why.reasons)) }
                    }
                }
                break
            }
            state.commit(vm, to: h)
            placements.append(.init(vm: name, host: state.hosts[h].name))
        }
        let ms = milliseconds(since: start)
        let out = Output(
            placed: placements.count, unplaced: unplaced.count, hostsUsed: state.hosts.filter { !$0.vms.isEmpty }.count,
            elapsedMs: ms, strategy: chosen.rawValue, limitedBy: limitedBy,
            placements: placements, unplacedVMs: unplaced)
        if output == .json {
            try printJSON(out)
            return
        }
        print("placed \(out.placed), unplaced \(out.unplaced), hosts used \(out.hostsUsed) of \(state.hosts.count), \(String(format: "%.1f", out.elapsedMs)) ms (\(chosen.rawValue))")
        if let limitedBy { print("stopped: \(limitedBy)") }
        print(String(format: "%-20@ %6@ %8@ %12@ %12@", "HOST" as NSString, "VMS" as NSString, "VCPUS" as NSString, "MEMORY MiB" as NSString, "FREE MiB" as NSString))
        for h in state.hosts {
            print(String(format: "%-20@ %6d %4d/%-4d %12d %12d", h.name as NSString, h.vms.count, h.usedVCPUs, h.vcpuCapacity, h.usedMemoryMiB, h.freeMemoryMiB))
        }
        for u in unplaced.prefix(10) { print("unplaced \(u.vm): \(u.summary)") }
        if unplaced.count > 10 { print("... and \(unplaced.count - 10) more unplaced") }
    }
}

/// `vsphere-ctl simulate consolidate`: the DPM planner on a described cluster with its VMs where they run:
/// which VMs move where (in execution order) and which hosts could then be powered off.
struct SimulateConsolidate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "consolidate",
        abstract: "Plan consolidation of a cluster file's running VMs onto fewer hosts (moves, hosts to power off).")

    @Option(name: .shortAndLong, help: "Cluster file: hosts with capacity, VMs with the host they run on.") var file: String
    @Option(help: "Empty hosts kept powered on as headroom.") var spareHosts: Int = 0
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table

    struct Output: Encodable {
        var placed: Int
        var unplaced: Int
        var hostsUsed: Int
        var hostsBefore: Int
        var lowerBound: Int
        var elapsedMs: Double
        var moves: [Move]
        var hostsToPowerOff: [String]
        var spareHosts: [String]
        var kept: [Kept]
    }

    func validate() throws {
        if !(0...100_000).contains(spareHosts) { throw ValidationError("--spare-hosts: must be between 0 and 100000") }
    }

    func run() throws {
        let manifest = try simulatedCluster(file)
        let start = ContinuousClock.now
        let (state, running, pending) = ClusterSnapshot.state(manifest)
        let vms = Dictionary(uniqueKeysWithValues: running.map { ($0.name, $0) })
        let plan = Consolidator(spareHosts: spareHosts).plan(state, vms: vms)
        let ms = milliseconds(since: start)
        let out = Output(
            placed: running.count, unplaced: pending.count, hostsUsed: plan.hostsUsed,
            hostsBefore: state.hosts.filter { !$0.vms.isEmpty }.count, lowerBound: plan.lowerBound,
            elapsedMs: ms, moves: plan.moves, hostsToPowerOff: plan.hostsToPowerOff,
            spareHosts: plan.spareHosts, kept: plan.kept)
        if output == .json {
            try printJSON(out)
            return
        }
        print("hosts used \(out.hostsBefore) → \(out.hostsUsed) (lower bound \(out.lowerBound)), \(out.moves.count) moves in \(Set(out.moves.map(\.batch)).count) batches, \(String(format: "%.1f", out.elapsedMs)) ms")
        if !out.hostsToPowerOff.isEmpty { print("power off: \(out.hostsToPowerOff.joined(separator: ", "))") }
        if !out.spareHosts.isEmpty { print("spare (kept on): \(out.spareHosts.joined(separator: ", "))") }
        for m in out.moves.prefix(50) { print("batch \(m.batch): \(m.vm) \(m.from) → \(m.to) (\(m.reason))") }
        if out.moves.count > 50 { print("... and \(out.moves.count - 50) more moves") }
        for k in out.kept where k.reason.hasPrefix("stays on:") { print("\(k.host ?? k.vm ?? "?") \(k.reason)") }
        if out.unplaced > 0 { print("\(out.unplaced) VMs name no host: not part of the plan") }
    }
}
