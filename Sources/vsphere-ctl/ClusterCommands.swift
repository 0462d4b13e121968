import AgentAPI
import ArgumentParser
import ClusterModel
import ControllerAPI
import Foundation

func loadManifest(_ file: String) throws -> ClusterManifest {
    do {
        return try ClusterManifest.decodeValidated(try readInput(file))
    } catch let failure as ValidationFailure {
        throw reportProblems(failure.problems)
    }
}

func printChanges(_ r: ApplyResponse, output: OutputFormat, verb: String) throws {
    if output == .json { return try printJSON(r) }
    if r.changes.isEmpty { print("no changes"); return }
    table(["ACTION", "KIND", "NAME", "REASON"], r.changes.map { [$0.action, $0.kind, $0.name, $0.reason] })
    print("\(r.changes.count) change\(r.changes.count == 1 ? "" : "s") \(verb)")
}

/// `vsphere-ctl plan -f FILE`: what apply would do, with reasons; changes nothing.
struct Plan: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show what apply would do, with reasons; change nothing.")
    @OptionGroup var server: ServerOptions
    @Option(name: .shortAndLong, help: "Manifest (JSON), or - for standard input.") var file: String
    @Flag(help: "Also delete VMs absent from the document.") var prune = false
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table

    func run() async throws {
        let manifest = try loadManifest(file)
        let client = try server.client()
        defer { Task { await client.close() } }
        let r: ApplyResponse = try await client.call(.POST, "/v1/plan", body: try JSONEncoder().encode(ApplyRequest(manifest: manifest, prune: prune, dryRun: true)))
        try printChanges(r, output: output, verb: "planned")
    }
}

/// `vsphere-ctl apply -f FILE [--wait] [--prune]`.
struct Apply: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Merge a manifest into the cluster's desired state (idempotent).")
    @OptionGroup var server: ServerOptions
    @Option(name: .shortAndLong, help: "Manifest (JSON), or - for standard input.") var file: String
    @Flag(help: "Also delete VMs absent from the document.") var prune = false
    @Flag(help: "Wait until every VM of the document is in its desired power state.") var wait = false
    @Option(help: "Seconds to wait at most.") var timeout: Int = 600
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table

    func run() async throws {
        let manifest = try loadManifest(file)
        let client = try server.client()
        defer { Task { await client.close() } }
        let r: ApplyResponse = try await client.call(.POST, "/v1/apply", body: try JSONEncoder().encode(ApplyRequest(manifest: manifest, prune: prune)))
        try printChanges(r, output: output, verb: "applied")
        if wait {
            let names = Set((manifest.vms ?? []).map(\.name))
            let want = Dictionary(uniqueKeysWithValues: (manifest.vms ?? []).map { ($0.name, ($0.powerState ?? "running") == "running" ? "running" : "shutoff") })
            try await waitFor(client: client, names: names, want: want, timeout: timeout, quiet: output == .json)
        }
    }
}

/// Waits until every named VM is in its wanted state. Stops early (exit 1) when every VM still waiting
/// has had its last `failuresToGiveUp` tasks fail since the wait began (a start that keeps failing
/// will not succeed by waiting), with each one's error.
func waitFor(client: ControllerClient, names: Set<String>, want: [String: String], timeout: Int, quiet: Bool) async throws {
    let start = ContinuousClock.now
    let deadline = start + .seconds(timeout)
    let tty = isatty(1) == 1 && !quiet
    // Tasks before the wait began are not this wait's failures.
    let firstTask = ((try? await client.call(.GET, "/v1/tasks") as [TaskView]) ?? []).map(\.id).max().map { $0 + 1 } ?? 0
    var lastTaskLook = start
    while true {
        let vms: [VMView] = try await client.call(.GET, "/v1/vms")
        let mine = vms.filter { names.contains($0.name) }
        let done = mine.filter { want[$0.name] == $0.state }
        if tty {
            let width = 30
            let filled = names.isEmpty ? width : width * done.count / names.count
            let bar = "\r[\(String(repeating: "#", count: filled))\(String(repeating: ".", count: width - filled))] \(done.count)/\(names.count) VMs ready"
            FileHandle.standardOutput.write(Data(bar.utf8))
        }
        if done.count == names.count {
            if tty { print() }
            return
        }
        if ContinuousClock.now - lastTaskLook > .seconds(2) {
            lastTaskLook = ContinuousClock.now
            let waiting = Set(names).subtracting(done.map(\.name))
            let tasks: [TaskView] = (try? await client.call(.GET, "/v1/tasks")) ?? []
            if let failing = keepsFailing(tasks.filter { $0.id >= firstTask }, waiting: waiting) {
                if tty { print() }
                for (vm, task) in failing.sorted(by: { $0.key < $1.key }) {
                    stderr("\(vm): \(task.action) failed \(failuresToGiveUp) times in a row on \(task.host ?? "?"): \(task.error ?? "no error given")")
                }
                stderr("gave up waiting: every VM still waiting keeps failing (vsphere-ctl get tasks)")
                throw ExitCode(Exit.failed)
            }
        }
        if ContinuousClock.now > deadline {
            if tty { print() }
            for vm in mine where want[vm.name] != vm.state {
                stderr("\(vm.name): \(vm.state)\(vm.message.map { " (\($0))" } ?? "")")
            }
            stderr("timed out after \(timeout) s")
            throw ExitCode(Exit.failed)
        }
        // Most VMs are up within seconds: look often at first, then every half second.
        try await Task.sleep(for: .milliseconds(ContinuousClock.now - start < .seconds(10) ? 100 : 500))
    }
}

/// How many failed tasks in a row, for a VM, end a wait.
let failuresToGiveUp = 3

/// The latest failed task of each waiting VM when every one of them has had only failures in its last
/// `failuresToGiveUp` finished tasks; nil as soon as one of them may still get there.
func keepsFailing(_ tasks: [TaskView], waiting: Set<String>) -> [String: TaskView]? {
    guard !waiting.isEmpty else { return nil }
    var out: [String: TaskView] = [:]
    for vm in waiting {
        let last = tasks.filter { $0.kind == "vm" && $0.name == vm && $0.state != "running" }.sorted { $0.id > $1.id }.prefix(failuresToGiveUp)
        guard last.count == failuresToGiveUp, last.allSatisfy({ $0.state == "failed" }), let latest = last.first else { return nil }
        out[vm] = latest
    }
    return out
}

/// `vsphere-ctl get hosts|vms|pools|networks|resource-pools|tasks|events`.
struct Get: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List hosts, vms, pools, networks, resource-pools, tasks, events, migrations or jobs (DRS applies, evacuations).")
    @OptionGroup var server: ServerOptions
    @Argument(help: "hosts, vms, pools, networks, resource-pools, tasks, events, migrations, jobs, alarms") var what: String
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table

    func validate() throws {
        let known = ["hosts", "vms", "pools", "networks", "resource-pools", "tasks", "events", "migrations", "jobs", "alarms"]
        if !known.contains(what) { throw ValidationError("unknown kind \(what); use one of \(known.joined(separator: ", "))") }
    }

    func run() async throws {
        let client = try server.client()
        defer { Task { await client.close() } }
        switch what {
        case "hosts":
            let hosts: [HostView] = try await client.call(.GET, "/v1/hosts")
            if output == .json { return try printJSON(hosts) }
            table(["NAME", "SITE", "STATE", "POWER", "CPUS", "PARKED", "MEMORY", "VMS", "AGENT", "MESSAGE"], hosts.map {
                [$0.name, $0.site ?? "-", $0.state, $0.power ?? "-", $0.cpus.map(String.init) ?? "-",
                 $0.parkedCPUs.map { $0.isEmpty ? "-" : $0.map(String.init).joined(separator: ",") } ?? "-",
                 $0.memoryMiB.map { "\($0) MiB" } ?? "-", String($0.vms), $0.agent ?? "-", $0.message ?? ""]
            })
        case "vms":
            let vms: [VMView] = try await client.call(.GET, "/v1/vms")
            if output == .json { return try printJSON(vms) }
            table(["NAME", "HOST", "STATE", "CPUS", "MEMORY", "POOL", "MESSAGE"], vms.map {
                [$0.name, $0.host ?? "-", $0.state, String($0.cpus), "\($0.memoryMiB) MiB", $0.resourcePool ?? "-", $0.message ?? ""]
            })
        case "pools":
            let pools: [StoragePoolView] = try await client.call(.GET, "/v1/pools")
            if output == .json { return try printJSON(pools) }
            func gib(_ b: UInt64) -> String { String(format: "%.1f GiB", Double(b) / 1_073_741_824) }
            // One line per pool and host: each host has its own figures (a shared pool shows the same
            // file system from every host).
            var rows: [[String]] = []
            for p in pools {
                let place = p.path ?? p.volumeGroup ?? "-"
                if p.hosts.isEmpty { rows.append([p.name, p.type, place, "-", "-", "-", "-", "-", "no host sees it"]) }
                for h in p.hosts {
                    let state = h.active ? "active" : "inactive"
                    rows.append([p.name, p.type, place, h.host, state, gib(h.capacityBytes), gib(h.availableBytes), String(h.volumes), h.error ?? ""])
                }
            }
            table(["NAME", "TYPE", "PATH", "HOST", "STATE", "CAPACITY", "FREE", "VOLUMES", "MESSAGE"], rows)
        case "networks":
            let nets: [NetworkView] = try await client.call(.GET, "/v1/networks")
            if output == .json { return try printJSON(nets) }
            // One line per network and host: each host carries the segment on its own bridge.
            var rows: [[String]] = []
            for n in nets {
                let segment = n.vni.map { "vni \($0)" } ?? n.vlan.map { "vlan \($0)" } ?? "-"
                let policy = (n.antiSpoofing ? "anti-spoofing" : "open") + (n.portGroups.isEmpty ? "" : "; port groups " + n.portGroups.joined(separator: ","))
                if n.hosts.isEmpty { rows.append([n.name, n.mode, segment, n.bridge, "-", "-", "-", "-", "no hosts"]) }
                for h in n.hosts {
                    rows.append([n.name, n.mode, segment, n.bridge, h.host, h.up ? "up" : "down", h.mtu.map(String.init) ?? "-",
                                 String(h.ports.count), n.mode == "vxlan" ? String(h.peers.count) : "-", h.error ?? policy])
                }
            }
            table(["NAME", "MODE", "SEGMENT", "BRIDGE", "HOST", "STATE", "MTU", "PORTS", "PEERS", "MESSAGE"], rows)
        case "resource-pools":
            let rps: [ResourcePoolView] = try await client.call(.GET, "/v1/resource-pools")
            if output == .json { return try printJSON(rps) }
            table(["NAME", "PARENT", "CPU RES/LIMIT MHz", "MEM RES/LIMIT MiB", "SHARES", "VMS", "PER HOST (cpu limit MHz, mem limit MiB)"], rps.map { p in
                [p.name, p.parent ?? "-", "\(p.effectiveReservation.cpuMHz)/\(p.cpu?.limitMHz.map(String.init) ?? "-")",
                 "\(p.effectiveReservation.memoryMiB)/\(p.memory?.limitMiB.map(String.init) ?? "-")",
                 p.cpu?.shares.map(sharesText) ?? "normal", String(p.vms),
                 p.hosts.filter { $0.setting.vms > 0 }.map { h in
                     "\(h.host): \(h.setting.cpuLimitMHz.map(String.init) ?? "-")/\(h.setting.memoryLimitMiB.map(String.init) ?? "-")" + (h.error != nil || !(h.applied?.errors.isEmpty ?? true) ? " (!)" : "")
                 }.joined(separator: ", ")]
            })
        case "alarms":
            let alarms: [AlarmView] = try await client.call(.GET, "/v1/alarms")
            if output == .json { return try printJSON(alarms) }
            table(["ID", "TIME", "KIND", "VM", "HOST", "STATE", "MESSAGE"], alarms.map {
                [String($0.id), isoTime($0.timeMs), $0.kind, $0.name ?? "-", $0.host ?? "-", $0.state, $0.message]
            })
        case "jobs":
            let jobs: [JobView] = try await client.call(.GET, "/v1/jobs")
            if output == .json { return try printJSON(jobs) }
            table(["ID", "KIND", "HOST", "STATE", "ACTIONS", "FAILED", "NOTE"], jobs.map { j in
                [String(j.id), j.kind, j.host ?? "-", j.state, String(j.items.count),
                 String(j.items.filter { $0.state == "failed" || $0.state == "skipped" }.count), j.notes.last ?? ""]
            })
        case "tasks":
            let tasks: [TaskView] = try await client.call(.GET, "/v1/tasks")
            if output == .json { return try printJSON(tasks) }
            table(["ID", "ACTION", "VM", "HOST", "STATE", "REASON", "ERROR"], tasks.map {
                [String($0.id), $0.action, $0.name, $0.host ?? "-", $0.state, $0.reason, $0.error ?? ""]
            })
        case "events":
            let events: [EventView] = try await client.call(.GET, "/v1/events")
            if output == .json { return try printJSON(events) }
            printEvents(events)
        default:
            let migrations: [MigrationView] = try await client.call(.GET, "/v1/migrations")
            if output == .json { return try printJSON(migrations) }
            printMigrations(migrations)
        }
    }
}

func printEvents(_ events: [EventView]) {
    let f = ISO8601DateFormatter()
    for e in events {
        let t = f.string(from: Date(timeIntervalSince1970: Double(e.timeMs) / 1000))
        print([t, e.kind, e.name ?? "-", e.event ?? "", e.detail ?? "", e.message ?? ""].joined(separator: "  "))
    }
}

/// `vsphere-ctl events [--follow]`.
struct Events: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the controller's event log.")
    @OptionGroup var server: ServerOptions
    @Flag(help: "Keep printing new events.") var follow = false
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table

    func run() async throws {
        let client = try server.client()
        defer { Task { await client.close() } }
        var after: Int64?
        repeat {
            // First the newest events, then (following) whatever comes after the last one shown.
            let events: [EventView] = try await client.call(.GET, after.map { "/v1/events?after=\($0)" } ?? "/v1/events")
            if output == .json {
                if follow {
                    for e in events { try printJSONLine(e) }
                } else {
                    try printJSON(events)
                }
            } else {
                printEvents(events)
            }
            after = events.last?.id ?? after
            if follow { try await Task.sleep(for: .seconds(1)) }
        } while follow
    }
}

func printJSONLine<T: Encodable>(_ v: T) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys]
    print(String(decoding: try e.encode(v), as: UTF8.self))
}

/// `vsphere-ctl describe host|vm NAME`.
struct Describe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one host or VM.")
    @OptionGroup var server: ServerOptions
    @Argument(help: "host or vm") var kind: String
    @Argument(help: "its name") var name: String
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table

    func validate() throws {
        if kind != "host" && kind != "vm" { throw ValidationError("describe host NAME or describe vm NAME") }
        if !Names.isValid(name) { throw ValidationError("\(name): must match ^[a-z][a-z0-9-]{0,62}$") }
    }

    func run() async throws {
        let client = try server.client()
        defer { Task { await client.close() } }
        if kind == "vm" {
            let vm: VMView = try await client.call(.GET, "/v1/vms/\(name)")
            if output == .json { return try printJSON(vm) }
            for (k, v) in [("Name", vm.name), ("Host", vm.host ?? "-"), ("State", vm.state), ("Desired", vm.desiredPower),
                           ("CPUs", String(vm.cpus)), ("Memory", "\(vm.memoryMiB) MiB"), ("Pool", vm.resourcePool ?? "-"), ("Message", vm.message ?? "")] {
                print("\(k):".padding(toLength: 10, withPad: " ", startingAt: 0) + v)
            }
        } else {
            let h: HostView = try await client.call(.GET, "/v1/hosts/\(name)")
            if output == .json { return try printJSON(h) }
            for (k, v) in [("Name", h.name), ("Site", h.site ?? "-"), ("State", h.state), ("Agent", h.agent ?? "-"),
                           ("CPUs", h.cpus.map(String.init) ?? "-"), ("Memory", h.memoryMiB.map { "\($0) MiB" } ?? "-"), ("VMs", String(h.vms)), ("Message", h.message ?? "")] {
                print("\(k):".padding(toLength: 10, withPad: " ", startingAt: 0) + v)
            }
        }
    }
}

/// `vsphere-ctl delete vm NAME` / `vsphere-ctl delete -f FILE`.
struct Delete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete a VM or a resource pool, or every VM of a manifest.")
    @OptionGroup var server: ServerOptions
    @Argument(help: "vm NAME | resource-pool NAME") var args: [String] = []
    @Option(name: .shortAndLong, help: "Manifest whose VMs to delete.") var file: String?

    func validate() throws {
        if file == nil && (args.count != 2 || !["vm", "resource-pool"].contains(args[0])) {
            throw ValidationError("delete vm NAME, delete resource-pool NAME, or delete -f FILE")
        }
        if file == nil && !Names.isValid(args[1]) { throw ValidationError("\(args[1]): must match ^[a-z][a-z0-9-]{0,62}$") }
    }

    func run() async throws {
        let client = try server.client()
        defer { Task { await client.close() } }
        if file == nil && args[0] == "resource-pool" {
            let _: ApplyResponse = try await client.call(.DELETE, "/v1/resource-pools/\(args[1])")
            print("resource pool \(args[1]) deleted")
            return
        }
        let names = try file.map { try (loadManifest($0).vms ?? []).map(\.name) } ?? [args[1]]
        for n in names {
            let _: ApplyResponse = try await client.call(.DELETE, "/v1/vms/\(n)")
            print("vm \(n) deleted")
        }
    }
}

/// `vsphere-ctl vm start|stop|restart NAME [--wait]`.
struct VMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm", abstract: "Start, stop, restart, live-migrate a VM or move its storage.",
        discussion: """
            vm migrate NAME --to HOST [--wait] [--policy NAME] [--bandwidth MIBPS] [--budget SECONDS] [-o json]
            vm move-storage NAME --disk N --pool POOL [--wait] [--bandwidth MIBPS] [-o json]: storage vMotion of a running VM's disk
            """)
    @OptionGroup var server: ServerOptions
    @Argument(help: "start, stop, restart, migrate or move-storage") var action: String
    @Argument(help: "the VM") var name: String
    @Flag(help: "Wait until the VM is in the desired state (or the migration ended).") var wait = false
    @Option(help: "Seconds to wait at most.") var timeout: Int = 300
    @Option(help: "migrate: the destination host.") var to: String?
    @Option(help: "move-storage: the disk (0-based).") var disk: Int?
    @Option(help: "move-storage: the storage pool it moves to.") var pool: String?
    @Option(help: "migrate: minimal-downtime, auto-converge, post-copy or suspend-if-needed.") var policy: String?
    @Option(help: "migrate: cap in MiB/s.") var bandwidth: Int?
    @Option(help: "migrate: seconds before the policy gives up (or switches).") var budget: Int?
    @Option(name: .shortAndLong, help: "migrate: table or json (json waits and prints the finished migration).") var output: OutputFormat = .table

    func validate() throws {
        if !["start", "stop", "restart", "migrate", "move-storage"].contains(action) {
            throw ValidationError("\(action): use start, stop, restart, migrate or move-storage")
        }
        if action == "move-storage" {
            guard let disk, (0..<26).contains(disk) else { throw ValidationError("--disk: move-storage needs the disk, 0 to 25") }
            guard let pool, Names.isValid(pool) else { throw ValidationError("--pool: move-storage needs a storage pool name") }
            if let b = bandwidth, !(1...100_000).contains(b) { throw ValidationError("--bandwidth: must be between 1 and 100000") }
            if to != nil || policy != nil || budget != nil { throw ValidationError("--to, --policy and --budget belong to vm migrate") }
            return
        }
        if disk != nil || pool != nil { throw ValidationError("--disk and --pool belong to vm move-storage") }
        if !Names.isValid(name) { throw ValidationError("\(name): must match ^[a-z][a-z0-9-]{0,62}$") }
        if action == "migrate" {
            guard let to else { throw ValidationError("--to: migrate needs the destination host") }
            if !Names.isValid(to) { throw ValidationError("--to: must match ^[a-z][a-z0-9-]{0,62}$") }
            if let p = policy, !["minimal-downtime", "auto-converge", "post-copy", "suspend-if-needed"].contains(p) {
                throw ValidationError("--policy: must be minimal-downtime, auto-converge, post-copy or suspend-if-needed")
            }
            if let b = bandwidth, !(1...100_000).contains(b) { throw ValidationError("--bandwidth: must be between 1 and 100000") }
            if let b = budget, !(1...86_400).contains(b) { throw ValidationError("--budget: must be between 1 and 86400") }
        } else if to != nil || policy != nil || bandwidth != nil || budget != nil {
            throw ValidationError("--to, --policy, --bandwidth and --budget belong to vm migrate")
        }
    }

    func run() async throws {
        let client = try server.client()
        defer { Task { await client.close() } }
        if action == "move-storage" {
            let started: DiskMoveStatus = try await client.call(.POST, "/v1/vms/\(name)/move-storage", body: try JSONEncoder().encode(MoveStorageRequest(disk: disk!, pool: pool!, bandwidthMiBps: bandwidth)))
            if !(wait || output == .json) {
                print("vm \(name): moving \(started.target) from \(started.source) to \(started.destination)")
                return
            }
            let deadline = Date().addingTimeInterval(Double(timeout))
            var last = started
            while Date() < deadline {
                let all: [DiskMoveStatus] = try await client.call(.GET, "/v1/vms/\(name)/move-storage")
                if let now = all.first(where: { $0.target == started.target && $0.startedMs == started.startedMs }) ?? all.first(where: { $0.target == started.target }) {
                    last = now
                    if output != .json {
                        let pct = now.totalBytes > 0 ? Int(Double(now.copiedBytes) / Double(now.totalBytes) * 100) : 0
                        print("\(now.state) \(pct)% (\(now.copiedBytes >> 20) of \(now.totalBytes >> 20) MiB)")
                    }
                    if now.endedMs != nil { break }
                }
                try await Task.sleep(for: .seconds(1))
            }
            if output == .json { try printJSON(last) }
            if last.state == "failed" { throw ExitCode(1) }
            if last.endedMs == nil {
                stderr("timed out after \(timeout) s; the move goes on")
                throw ExitCode(Exit.failed)
            }
            return
        }
        if action == "migrate" {
            return try await migrate(
                client: client, vm: name, request: MigrateRequest(to: to!, policy: policy, bandwidthMiBps: bandwidth, budgetSeconds: budget),
                wait: wait || output == .json, json: output == .json, timeout: timeout)
        }
        let _: ApplyResponse = try await client.call(.POST, "/v1/vms/\(name)/\(action)")
        print("vm \(name): \(action) requested")
        if wait {
            try await waitFor(client: client, names: [name], want: [name: action == "stop" ? "shutoff" : "running"], timeout: timeout, quiet: false)
        }
    }
}

func sharesText(_ s: Shares) -> String {
    switch s {
    case .low: return "low"
    case .normal: return "normal"
    case .high: return "high"
    case .custom(let n): return String(n)
    }
}
