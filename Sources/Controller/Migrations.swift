import AgentAPI
import ClusterModel
import ControllerAPI
import Foundation
import Logging
import MigrationPolicy
import Placement
import ServiceLifecycle
import Store

/// A request the controller refuses in the cluster's current state (HTTP 409).
public struct Conflict: Error, CustomStringConvertible {
    public var description: String
    public var problems: [ValidationProblem]
    public init(_ description: String, problems: [ValidationProblem] = []) {
        self.description = description
        self.problems = problems
    }
}

/// Live migration (vMotion), orchestrated: requests are checked and queued; the migration loop starts
/// them within the per-host limits (priced first, local disks prepared on the destination), follows
/// them on the source's agent, and records the outcome. Every state lives in the store, so a
/// restarted controller picks up where it was; libvirt keeps exactly one running copy of the guest.
extension Controller {
    static let defaultMaxOutgoing = 2
    static let defaultMaxIncoming = 2
    /// Link estimate before any migration between two sites was measured (MiB/s).
    static let defaultLinkMiBps: Int64 = 256

    // MARK: Requests

    public func requestMigration(vm name: String, _ req: MigrateRequest) async throws -> MigrationView {
        let manifest = try await desired()
        guard let spec = manifest.vms?.first(where: { $0.name == name }) else { throw ControllerServer.NotFound(what: "vm \(name)") }
        var problems: [ValidationProblem] = []
        let hosts = Dictionary(uniqueKeysWithValues: (manifest.hosts ?? []).map { ($0.name, $0) })
        if hosts[req.to] == nil { problems.append(.init("to", "no host \(req.to) in the cluster")) }
        let settings = manifest.settings?.migration
        let policyName = req.policy ?? settings?.defaultPolicy ?? "minimal-downtime"
        if !ConvergencePolicy.names.contains(policyName) {
            problems.append(.init("policy", "must be one of \(ConvergencePolicy.names.joined(separator: ", "))"))
        }
        if let bw = req.bandwidthMiBps, !(1...100_000).contains(bw) { problems.append(.init("bandwidthMiBps", "must be between 1 and 100000")) }
        if let b = req.budgetSeconds, !(1...86_400).contains(b) { problems.append(.init("budgetSeconds", "must be between 1 and 86400")) }
        if !problems.isEmpty { throw ValidationFailure(problems) }

        let statuses = Dictionary(uniqueKeysWithValues: try await store.vmStatuses().map { ($0.name, $0) })
        guard let status = statuses[name], let source = status.host, status.state == "running" || status.state == "paused" else {
            throw Conflict("\(name) is \(statuses[name]?.state ?? "pending"); only a running VM migrates live")
        }
        if let busy = try await store.activeMigrations().first(where: { $0.vm == name }) {
            throw Conflict("\(name) is already migrating (m-\(busy.id), \(busy.state))")
        }
        let blockers = try await compatibility(spec: spec, manifest: manifest, source: source, destination: req.to)
        if !blockers.isEmpty {
            throw Conflict(
                "\(name) cannot move to \(req.to): " + blockers.map(\.description).joined(separator: "; "),
                problems: blockers.map { ValidationProblem($0.check, $0.message) })
        }
        let policy = ConvergencePolicy.named(policyName, memoryMiB: spec.memoryMiB, budgetSeconds: req.budgetSeconds)!
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        var view: MigrationView?
        let id = try await store.addMigration(vm: name, source: source, destination: req.to, state: "queued") { id in
            let v = MigrationView(id: id, vm: name, from: source, to: req.to, state: "queued", policy: policy, bandwidthMiBps: req.bandwidthMiBps, createdMs: now)
            view = v
            return Self.json(v)
        }
        try await store.addEvent(source: "controller", kind: "migration", name: name, event: "queued", detail: "m-\(id)", message: "\(source) → \(req.to), policy \(policyName)")
        return view!
    }

    /// Reasons the VM cannot move now (placement filters, CPU, networks), from the store's view of the
    /// cluster and the source's live definition.
    func compatibility(spec: VMSpec, manifest: ClusterManifest, source: String, destination: String) async throws -> [Compatibility.Problem] {
        var (state, _) = try await snapshot(manifest)
        // Migrations under way count on their destinations too.
        let specs = Dictionary(uniqueKeysWithValues: (manifest.vms ?? []).map { ($0.name, $0) })
        for m in try await store.activeMigrations() where m.vm != spec.name {
            if let i = state.hosts.firstIndex(where: { $0.name == m.destination }), let s = specs[m.vm] {
                var vm = ClusterSnapshot.vm(s)
                vm.name = "\(m.vm)@incoming"
                state.hosts[i].add(vm)
            }
        }
        let inventories = try await store.hostStatuses().reduce(into: [String: HostInventory]()) { out, h in
            if let inv = h.inventory.flatMap({ Self.decode(HostInventory.self, $0) }) { out[h.name] = inv }
        }
        var live = try hostSpec(spec, manifest: manifest)
        if let agent = manifest.hosts?.first(where: { $0.name == source })?.agent,
            let running = try? await agents.vm(agent, spec.name).spec
        {
            live.cpuModel = running.cpuModel
        }
        return Compatibility.check(
            vm: ClusterSnapshot.vm(spec), spec: live, state: state, source: source, destination: destination,
            sourceFacts: inventories[source].map(Self.facts), destinationFacts: inventories[destination].map(Self.facts))
    }

    static func facts(_ inv: HostInventory) -> Compatibility.HostFacts {
        Compatibility.HostFacts(
            cpuModels: Set(inv.cpuModels ?? []), hostCPUModel: inv.hostCPUModel, networks: Set(inv.networks ?? []),
            accelerator: inv.accelerator)
    }

    public func migrationViews() async throws -> [MigrationView] {
        try await store.migrations().compactMap { Self.decode(MigrationView.self, $0.record) }
    }

    /// `m-ID`, or a VM's name (its latest migration).
    public func migrationView(_ ref: String) async throws -> MigrationView? {
        if ref.hasPrefix("m-"), let id = Int64(ref.dropFirst(2)) {
            return try await store.migration(id: id).flatMap { Self.decode(MigrationView.self, $0.record) }
        }
        return try await migrationViews().first { $0.vm == ref }
    }

    public func cancelMigration(_ ref: String) async throws -> MigrationView? {
        guard let view = try await migrationView(ref) else { return nil }
        guard let row = try await store.migration(id: view.id), row.isActive else {
            throw Conflict("m-\(view.id) has already ended (\(view.state))")
        }
        var v = view
        v.cancelRequested = true
        if row.state == "queued" {
            v.state = "cancelled"
            v.result = "cancelled"
            v.error = "cancelled by the operator before it started"
            v.finishedMs = Int64(Date().timeIntervalSince1970 * 1000)
        }
        try await store.updateMigration(v.id, state: v.state, record: Self.json(v))
        try await store.addEvent(source: "controller", kind: "migration", name: v.vm, event: "cancel-requested", detail: v.name, message: nil)
        return v
    }

    // MARK: The loop's pass

    /// One pass: follow running migrations, then start queued ones within the per-host limits.
    public func driveMigrations() async throws {
        let active = try await store.activeMigrations()
        guard !active.isEmpty else { return }
        let manifest = try await desired()
        let agentsByHost = Dictionary(uniqueKeysWithValues: (manifest.hosts ?? []).compactMap { h in h.agent.map { (h.name, $0) } })
        var outgoing: [String: Int] = [:]
        var incoming: [String: Int] = [:]
        for m in active where m.state != "queued" {
            guard var view = Self.decode(MigrationView.self, m.record) else { continue }
            do {
                try await follow(&view, row: m, agents: agentsByHost, manifest: manifest)
            } catch {
                logger.warning("following migration failed", metadata: ["id": "m-\(m.id)", "error": "\(error)"])
            }
            if !view.isFinished {
                outgoing[m.source, default: 0] += 1
                incoming[m.destination, default: 0] += 1
            }
        }
        let settings = manifest.settings?.migration
        let maxOut = settings?.maxOutgoingPerHost ?? Self.defaultMaxOutgoing
        let maxIn = settings?.maxIncomingPerHost ?? Self.defaultMaxIncoming
        for m in active where m.state == "queued" {
            guard outgoing[m.source, default: 0] < maxOut, incoming[m.destination, default: 0] < maxIn,
                var view = Self.decode(MigrationView.self, m.record)
            else { continue }
            // Re-read: a cancel may have arrived since the pass began.
            guard let row = try await store.migration(id: m.id), row.state == "queued" else { continue }
            outgoing[m.source, default: 0] += 1
            incoming[m.destination, default: 0] += 1
            await begin(&view, agents: agentsByHost, manifest: manifest)
        }
    }

    /// Writes the record. An operator's cancel written meanwhile (by the API) is kept: the loop works on
    /// a copy read at the start of its pass.
    func save(_ v: inout MigrationView) async throws {
        if !v.cancelRequested, let row = try await store.migration(id: v.id), let current = Self.decode(MigrationView.self, row.record),
            current.cancelRequested
        {
            v.cancelRequested = true
            if row.state == "cancelled" && v.state == "starting" {
                // Cancelled while queued, just as it was being started: it stays cancelled.
                v.state = "cancelled"
                v.result = "cancelled"
                v.error = current.error
                v.finishedMs = current.finishedMs
            }
        }
        try await store.updateMigration(v.id, state: v.state, record: Self.json(v))
    }

    /// Prices, prepares and starts a queued migration on the source's agent.
    func begin(_ v: inout MigrationView, agents urls: [String: String], manifest: ClusterManifest) async {
        v.state = "starting"
        v.startedMs = Int64(Date().timeIntervalSince1970 * 1000)
        do {
            try await save(&v)
            if v.isFinished { return }
            guard let src = urls[v.from], let dst = urls[v.to] else { throw Conflict("\(v.from) or \(v.to) has no agent") }
            guard let spec = manifest.vms?.first(where: { $0.name == v.vm }) else { throw Conflict("\(v.vm) is no longer desired") }
            let blockers = try await compatibility(spec: spec, manifest: manifest, source: v.from, destination: v.to)
            if !blockers.isEmpty { throw Conflict("cannot move to \(v.to): " + blockers.map(\.description).joined(separator: "; ")) }

            let facts = try await agents.migrationFacts(src, v.vm)
            // Disks in a shared pool stay where they are; every other disk is copied along.
            let sharedRoots = (manifest.storagePools ?? []).filter { $0.type == "shared" }.compactMap(\.path)
            let copy = facts.disks.filter { d in !sharedRoots.contains { d.path.hasPrefix($0.hasSuffix("/") ? $0 : $0 + "/") } }
            if let ro = copy.first(where: \.readonly) {
                throw Conflict("\(ro.target) (\(ro.path)) is read-only and not in a shared pool: it cannot be copied live")
            }
            var incremental = false
            let shared = facts.disks.filter { d in !copy.contains(d) }.map(\.path)
            if !copy.isEmpty || !shared.isEmpty {
                // The destination sees the shared pools' images, and receives empty images for the rest.
                let prepared = try await agents.prepareDisks(dst, DiskPrepare(disks: copy, mustExist: shared))
                v.preparedDisks = prepared.created
                // Recorded at once: whatever happens next, they are found and removed again.
                try await save(&v)
                if !copy.isEmpty {
                    incremental = prepared.backingPresent
                    v.copyDisks = copy.map(\.target)
                    v.storage = incremental ? "copy-incremental" : "copy"
                }
            }

            // The bandwidth: the request's cap and the host's share (its cap over its outgoing slots, so that
            // together they never exceed it), then the measured link.
            var bandwidth = v.bandwidthMiBps
            if let hostCap = manifest.settings?.migration?.hostBandwidthMiBps {
                let slots = manifest.settings?.migration?.maxOutgoingPerHost ?? Self.defaultMaxOutgoing
                bandwidth = min(bandwidth ?? Int.max, max(1, hostCap / max(1, slots)))
            }
            // The history, read once: what the link and this VM measured before.
            let history = try await migrationViews()
            let link = Self.linkEstimate(from: v.from, to: v.to, manifest: manifest, history: history)
            let effective = bandwidth.map { min(link.bandwidth, Int64($0) << 20) } ?? link.bandwidth
            // A full copy sends every allocated block of the chain (at most the virtual size); an
            // incremental one only the top image.
            let diskBytes = copy.reduce(Int64(0)) { $0 + (incremental ? $1.actualSize : $1.virtualSize) }
            // The memory that holds data: QEMU's resident memory overstates it (QEMU's own heap, the TCG
            // code cache); a previous migration of this VM measured what its first pass really sent.
            let previous = history.first { $0.vm == v.vm && $0.state == "completed" && $0.copyDisks.isEmpty && ($0.bytes ?? 0) > 0 }
            let dataBytes = previous.flatMap(\.bytes).map { min($0, facts.memoryBytes) } ?? facts.residentBytes
            v.predicted = Pricing.price(
                PriceInput(
                    memoryBytes: facts.memoryBytes, dataBytes: dataBytes, dirtyRate: facts.dirtyRate ?? 0,
                    bandwidth: effective, diskBytes: diskBytes, setupMs: link.setupMs, switchoverMs: link.switchoverMs),
                policy: v.policy)
            v.effectiveBandwidthMiBps = bandwidth

            let transport = manifest.settings?.migration?.transport ?? "tls"
            guard let host = URLComponents(string: dst)?.host else { throw Conflict("agent URL of \(v.to) has no host") }
            let uri = "qemu+\(transport)://\(host)/system"
            try await save(&v)
            if v.isFinished { throw Conflict("cancelled by the operator before it started") }
            do {
                _ = try await agents.startMigration(
                    src,
                    MigrationStart(
                        id: v.name, vm: v.vm, destinationURI: uri, copyDisks: v.copyDisks, incremental: incremental,
                        bandwidthMiBps: bandwidth, policy: v.policy,
                        unsafe: manifest.settings?.migration?.sharedStorageUnverifiable ?? false))
            } catch let f as AgentClient.Failure where f.status == 0 {
                // No answer: the agent may have started it. The row stays `starting`; following it asks
                // the agent, which knows.
                logger.warning("no answer starting migration", metadata: ["id": "\(v.name)", "error": "\(f)"])
                return
            }
        } catch {
            await fail(&v, error: "\(error)", agents: urls)
            return
        }
        // From here on the agent runs it: nothing but its own record may end it.
        v.state = "running"
        try? await save(&v)
        try? await store.addEvent(
            source: "controller", kind: "migration", name: v.vm, event: "started", detail: v.name,
            message: "\(v.from) → \(v.to); predicted \(v.predicted.map { "\($0.totalMs) ms, downtime \($0.downtimeMs) ms, \($0.outcome)" } ?? "?")")
    }

    func fail(_ v: inout MigrationView, error: String, agents urls: [String: String], state: String = "failed") async {
        v.state = state
        v.result = state
        v.error = error
        v.finishedMs = Int64(Date().timeIntervalSince1970 * 1000)
        if !v.preparedDisks.isEmpty, let dst = urls[v.to] {
            try? await agents.releaseDisks(dst, v.preparedDisks)
        }
        try? await save(&v)
        try? await store.addEvent(source: "controller", kind: "migration", name: v.vm, event: state, detail: v.name, message: error)
        logger.warning("migration ended", metadata: ["id": "\(v.name)", "state": "\(state)", "error": "\(error)"])
    }

    /// Reads the source agent's view of a running migration and records it; finishes it when it ended.
    func follow(_ v: inout MigrationView, row: Store.Migration, agents urls: [String: String], manifest: ClusterManifest) async throws {
        guard let src = urls[v.from] else { return }
        guard let p = try await agents.migration(src, v.name) else {
            // The agent has no record: it restarted, or it was never asked (a controller restart while
            // starting). Where libvirt has the VM decides.
            let dst = urls[v.to] ?? ""
            let atSource = try await agents.vmIfPresent(src, v.vm)
            let atDestination = try await agents.vmIfPresent(dst, v.vm)
            switch (atSource, atDestination) {
            case (.some, .none) where row.state == "starting":
                // Never started: queue it again from scratch.
                if !v.preparedDisks.isEmpty { try await agents.releaseDisks(dst, v.preparedDisks) }
                v.preparedDisks = []
                v.copyDisks = []
                v.storage = "shared"
                v.predicted = nil
                v.state = "queued"
                try await save(&v)
            case (.some, .none):
                await fail(&v, error: "the source agent lost track of the migration (it restarted); \(v.vm) stays on \(v.from)", agents: urls)
            case (.none, .some):
                try await complete(&v, progress: nil, agents: urls)
            case (.some, .some):
                // libvirt's job is still under way (both hosts hold the domain): wait for it to end.
                break
            case (.none, .none):
                await fail(&v, error: "\(v.vm) is on neither \(v.from) nor \(v.to)", agents: urls)
            }
            return
        }
        if v.cancelRequested && !p.isFinished && !v.steps.contains(where: { $0.action == "cancel" }) {
            let elapsed = p.sample?.elapsedMs ?? p.elapsedMs
            v.steps.append(PolicyStep(atMs: elapsed, iteration: p.sample?.iteration ?? 0, action: "cancel", detail: "requested by the operator"))
            do {
                _ = try await agents.cancelMigration(src, v.name)
            } catch {
                v.steps.append(PolicyStep(atMs: elapsed, iteration: p.sample?.iteration ?? 0, action: "cancel-refused", detail: "\(error)"))
            }
        }
        v.steps = p.steps + v.steps.filter { $0.action.hasPrefix("cancel") }
        v.progress = Self.progressView(p)
        if !p.isFinished {
            try await save(&v)
            return
        }
        if p.phase == "completed" {
            try await complete(&v, progress: p, agents: urls)
        } else {
            await fail(&v, error: p.error ?? p.phase, agents: urls, state: p.phase)
            var status = try await store.vmStatuses().first { $0.name == v.vm }
            if status != nil {
                status!.host = v.from
                status!.state = p.sourceState.map(Self.viewState) ?? status!.state
                status!.message = "migration \(v.name) \(p.phase): \(p.error ?? "")"
                try await store.setVMStatus(status!)
            }
        }
    }

    /// The VM now runs on the destination: record libvirt's numbers, settle it there, move its status.
    func complete(_ v: inout MigrationView, progress: MigrationProgress?, agents urls: [String: String]) async throws {
        let dst = urls[v.to] ?? ""
        if let job = try? await agents.completedJob(dst, v.vm) {
            v.totalMs = job.timeElapsedMs
            v.downtimeMs = job.downtimeMs
            v.bytes = job.dataProcessed > 0 ? job.dataProcessed : job.dataTotal
        } else if let p = progress {
            // libvirt keeps no completed-job statistics on the destination after post-copy: the agent's
            // last reading stands in (no downtime figure).
            v.totalMs = p.sample?.elapsedMs ?? p.elapsedMs
            v.bytes = p.sample?.dataProcessed
            let note = "libvirt kept no completed-job statistics on the destination; time and bytes from the source's last reading"
            if !v.steps.contains(where: { $0.detail == note }) {
                v.steps.append(PolicyStep(atMs: v.totalMs ?? 0, iteration: p.sample?.iteration ?? 0, action: "note", detail: note))
            }
        }
        // The copied disks live on the destination now (same paths); the source's copies go.
        if !v.preparedDisks.isEmpty, let src = urls[v.from] {
            try? await agents.releaseDisks(src, v.preparedDisks)
        }
        // Settled before it counts as completed: a failure here (the destination's agent unreachable) is
        // retried on the next pass rather than leaving a paused guest behind.
        let suspended = v.steps.contains { $0.action == "suspend" }
        let settled = try await agents.action(dst, v.vm, "settle", query: suspended ? "?resume=true" : "")
        let state = Self.viewState(settled.state)
        v.state = "completed"
        v.result = "completed"
        v.finishedMs = Int64(Date().timeIntervalSince1970 * 1000)
        try await save(&v)
        var status = try await store.vmStatuses().first { $0.name == v.vm }
            ?? Store.VMStatus(name: v.vm, host: nil, state: state, uuid: nil, message: nil, generation: 0)
        status.host = v.to
        status.state = state
        status.message = nil
        try await store.setVMStatus(status)
        if let ms = v.totalMs { metrics.migrationSeconds.record(.milliseconds(ms)) }
        if let ms = v.downtimeMs { metrics.downtimeSeconds.record(.milliseconds(ms)) }
        try await store.addEvent(
            source: "controller", kind: "migration", name: v.vm, event: "completed", detail: v.name,
            message: "\(v.from) → \(v.to) in \(v.totalMs.map(String.init) ?? "?") ms, downtime \(v.downtimeMs.map(String.init) ?? "?") ms")
    }

    static func progressView(_ p: MigrationProgress) -> MigrationProgressView {
        let mib = 1_048_576.0
        let s = p.sample
        let remaining = Double(p.memoryRemaining + p.diskRemaining)
        let bps = Double(s?.bandwidth ?? 0)
        return MigrationProgressView(
            transferredMiB: Double(p.memoryProcessed + p.diskProcessed) / mib, remainingMiB: remaining / mib,
            totalMiB: Double(p.memoryTotal + p.diskTotal) / mib, dirtyRateMiBps: Double(s?.dirtyRate ?? 0) / mib,
            bandwidthMiBps: bps / mib, iteration: s?.iteration ?? 0, elapsedMs: p.elapsedMs,
            etaSeconds: bps > 0 ? remaining / bps : nil,
            step: p.steps.last.map { "\($0.action): \($0.detail)" }, phase: p.phase)
    }

    /// What migrations between these hosts' sites measured lately (the last five completed ones without
    /// disk copies or a bandwidth cap): the link's throughput (QEMU's own figure, else bytes over job time), the fixed
    /// set-up time (job time not explained by the transfer) and the switch-over pause of idle guests.
    /// Defaults before any was measured.
    struct LinkFacts {
        var bandwidth: Int64 = Controller.defaultLinkMiBps << 20
        var setupMs: Int64 = 250
        var switchoverMs: Int64 = 50
    }

    /// Whether a migration ran at its bandwidth cap (its throughput says nothing about the link).
    static func capLimited(_ m: MigrationView) -> Bool {
        guard let cap = m.effectiveBandwidthMiBps ?? m.bandwidthMiBps else { return false }
        let measured = m.progress?.bandwidthMiBps ?? 0
        return measured <= 0 || measured >= Double(cap) * 0.9
    }

    static func linkEstimate(from: String, to: String, manifest: ClusterManifest, history: [MigrationView]) -> LinkFacts {
        let site = Dictionary(uniqueKeysWithValues: (manifest.hosts ?? []).map { ($0.name, $0.site ?? "") })
        let pair = (site[from] ?? "", site[to] ?? "")
        let recent = history.filter { m in
            m.state == "completed" && (site[m.from] ?? "", site[m.to] ?? "") == pair && (m.totalMs ?? 0) > 0 && (m.bytes ?? 0) > 0
                && m.copyDisks.isEmpty && !Self.capLimited(m)
        }.prefix(5)
        var facts = LinkFacts()
        func median(_ xs: [Int64]) -> Int64? { xs.isEmpty ? nil : xs.sorted()[xs.count / 2] }
        let rates: [Int64] = recent.map { m in
            let measured = Int64((m.progress?.bandwidthMiBps ?? 0) * 1_048_576)
            return measured > 0 ? measured : (m.bytes! * 1000) / m.totalMs!
        }
        if let r = median(rates) { facts.bandwidth = max(1 << 20, r) }
        let setups: [Int64] = zip(recent, rates).map { m, r in max(0, m.totalMs! - m.bytes! * 1000 / max(1, r)) }
        if let s = median(setups) { facts.setupMs = s }
        let idle = recent.filter { ($0.predicted?.dirtyRate ?? Int64.max) < 4 << 20 && $0.downtimeMs != nil }
        if let d = median(idle.map { $0.downtimeMs! }) { facts.switchoverMs = d }
        return facts
    }
}

/// Drives migrations every half second (and at once when poked by a request).
public final class MigrationLoop: Service, Sendable {
    let controller: Controller
    let poke: AsyncStream<Void>.Continuation
    let pokes: AsyncStream<Void>

    public init(controller: Controller) {
        self.controller = controller
        (pokes, poke) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    public func trigger() { poke.yield() }

    public func run() async throws {
        let poke = self.poke
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(500))
                    poke.yield()
                }
            }
            group.addTask { [self] in
                for await _ in pokes.cancelOnGracefulShutdown() {
                    do {
                        try await controller.driveMigrations()
                    } catch {
                        controller.logger.error("migration pass failed", metadata: ["error": "\(error)"])
                    }
                }
            }
            await group.next()
            group.cancelAll()
        }
    }
}
