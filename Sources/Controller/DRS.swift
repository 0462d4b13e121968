import AgentAPI
import ClusterModel
import ControllerAPI
import Foundation
import Logging
import MigrationPolicy
import Placement
import Planner
import ServiceLifecycle
import Store
import Synchronization

/// DRS and DPM in the controller: plans from the pure planners over the observed cluster and measured
/// demand, carried out as jobs (batches of live migrations, then host power actions), and maintenance
/// mode (a host's evacuation).
extension Controller {
    /// The cluster as DRS sees it now.
    struct DRSContext {
        var manifest: ClusterManifest
        var state: ClusterState
        var vms: [String: PlacementVM]
        var demand: [String: Demand]
        /// VMs DRS must not move now: migrating, or not running.
        var pinned: Set<String>
        var statuses: [String: Store.HostStatus]
        var inventories: [String: HostInventory]
        var history: [MigrationView]
        /// Desired-running VMs the scheduler could place nowhere.
        var waiting: Set<String>
    }

    func drsContext() async throws -> DRSContext {
        let manifest = try await desired()
        let (state, _) = try await snapshot(manifest)
        let vms = Self.placementVMs(manifest)
        let statuses = Dictionary(uniqueKeysWithValues: try await store.hostStatuses().map { ($0.name, $0) })
        var inventories: [String: HostInventory] = [:]
        for (name, s) in statuses { if let inv = s.inventory.flatMap({ Self.decode(HostInventory.self, $0) }) { inventories[name] = inv } }
        let demand = self.demand.demand(coreMHz: inventories.mapValues(\.cpu.mhz))
        var pinned = Set(try await store.activeMigrations().map(\.vm))
        let vmStatuses = try await store.vmStatuses()
        for s in vmStatuses where s.state != "running" { pinned.insert(s.name) }
        let running = Set((manifest.vms ?? []).filter { ($0.powerState ?? "running") == "running" }.map(\.name))
        let waiting = Set(vmStatuses.filter { $0.host == nil && running.contains($0.name) && ($0.message ?? "").hasPrefix("cannot be placed") }.map(\.name))
        return DRSContext(
            manifest: manifest, state: state, vms: vms, demand: demand, pinned: pinned, statuses: statuses, inventories: inventories,
            history: try await migrationViews(), waiting: waiting)
    }

    static func placementVMs(_ manifest: ClusterManifest) -> [String: PlacementVM] {
        Dictionary((manifest.vms ?? []).map { ($0.name, ClusterSnapshot.vm($0)) }, uniquingKeysWith: { _, last in last })
    }

    /// Appends the current host loads to DPM's history, from the observation that just ran (every
    /// reconcile pass: only placement's snapshot is read, not the rest of DRS's context).
    func recordLoads(_ manifest: ClusterManifest, inventories: [String: HostInventory]) async throws {
        let (state, _) = try await snapshot(manifest)
        let dpm = manifest.settings?.dpm
        let keep = Double(max(dpm?.powerOnSustainSeconds ?? 300, dpm?.powerOffSustainSeconds ?? 2400)) + 60
        let loads = Balancer.loads(state, vms: Self.placementVMs(manifest), demand: demand.demand(coreMHz: inventories.mapValues(\.cpu.mhz)))
        demand.addSample(UtilizationSample(timeMs: Int64(Date().timeIntervalSince1970 * 1000), loads: loads), keepSeconds: keep)
    }

    /// A move's price: the vMotion pricing with what the link and the VM measured so far.
    func moveCost(_ ctx: DRSContext) -> (String, String, String) -> MoveCost {
        let policyName = ctx.manifest.settings?.migration?.defaultPolicy ?? "minimal-downtime"
        var links: [String: LinkFacts] = [:]
        let specs = Dictionary(uniqueKeysWithValues: (ctx.manifest.vms ?? []).map { ($0.name, $0) })
        let residents = Dictionary(uniqueKeysWithValues: ctx.vms.keys.map { ($0, demand.residentMiB($0)) })
        return { vm, from, to in
            let key = "\(from)>\(to)"
            let link = links[key] ?? Self.linkEstimate(from: from, to: to, manifest: ctx.manifest, history: ctx.history)
            links[key] = link
            let memMiB = specs[vm]?.memoryMiB ?? 1024
            let memory = Int64(memMiB) << 20
            let data = residents[vm].flatMap { $0 }.map { Int64($0 * 1_048_576) } ?? memory
            let dirty = ctx.history.first { $0.vm == vm }?.predicted?.dirtyRate ?? 0
            let policy = ConvergencePolicy.named(policyName, memoryMiB: memMiB) ?? ConvergencePolicy.named("minimal-downtime")!
            let p = Pricing.price(
                PriceInput(memoryBytes: memory, dataBytes: min(data, memory), dirtyRate: dirty, bandwidth: link.bandwidth,
                           setupMs: link.setupMs, switchoverMs: link.switchoverMs),
                policy: policy)
            return MoveCost(seconds: Double(p.totalMs) / 1000, converges: p.outcome != "abort")
        }
    }

    struct DRSSettingsResolved {
        var automation: String
        var threshold: Int
        var minGain: Double
        var maxMoves: Int
        var interval: Int
        var dpmAutomation: String
        var power: PowerSettings
        var spareHosts: Int
        var maxOut: Int
        var maxIn: Int

        init(_ m: ClusterManifest) {
            let d = m.settings?.drs, p = m.settings?.dpm, mig = m.settings?.migration
            automation = d?.automation ?? "partiallyAutomated"
            threshold = d?.migrationThreshold ?? 3
            minGain = d?.minGain ?? 0.01
            maxMoves = d?.maxMoves ?? 32
            interval = d?.intervalSeconds ?? 300
            dpmAutomation = p?.automation ?? "off"
            power = PowerSettings(
                targetUtilization: Double(p?.targetUtilization ?? 63) / 100, tolerance: Double(p?.tolerance ?? 18) / 100,
                powerOnSustainSeconds: Double(p?.powerOnSustainSeconds ?? 300), powerOffSustainSeconds: Double(p?.powerOffSustainSeconds ?? 2400))
            spareHosts = p?.spareHosts ?? 0
            maxOut = mig?.maxOutgoingPerHost ?? Controller.defaultMaxOutgoing
            maxIn = mig?.maxIncomingPerHost ?? Controller.defaultMaxIncoming
        }
    }

    func powerRecord(_ host: String, _ ctx: DRSContext) -> PowerRecord? {
        ctx.statuses[host]?.power.flatMap { Self.decode(PowerRecord.self, $0) }
    }

    /// DPM's advice now, with the hosts it could wake.
    func powerAdvice(_ ctx: DRSContext, _ s: DRSSettingsResolved) -> PowerAdvice {
        guard s.dpmAutomation != "off" else { return PowerAdvice(action: .none, reason: "DPM is off (settings.dpm.automation)") }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let standby = standbyHosts(ctx).map { name in
            let inv = ctx.inventories[name]
            return StandbyHost(name: name, cpuMHz: (inv.map { $0.cpu.mhz * Self.guestCPUCount($0) }) ?? 0, memoryMiB: inv?.memory.totalMiB ?? 0)
        }
        // VMs waiting for a host wake one at once: that demand is not a passing peak.
        if !ctx.waiting.isEmpty, let wake = standby.max(by: { ($0.cpuMHz, $0.memoryMiB, $1.name) < ($1.cpuMHz, $1.memoryMiB, $0.name) }) {
            return PowerAdvice(action: .powerOn, hosts: [wake.name], reason: "\(ctx.waiting.sorted().joined(separator: ", ")) cannot be placed on the hosts that are on")
        }
        return PowerAdvisor(settings: s.power).advise(demand.samples(), now: now, standby: standby)
    }

    /// How long a host whose power-on failed is not woken again.
    static let powerOnRetryMs: Int64 = 300_000

    /// Hosts DPM may wake now, biggest first.
    func standbyHosts(_ ctx: DRSContext) -> [String] {
        let hosts = Dictionary(uniqueKeysWithValues: (ctx.manifest.hosts ?? []).map { ($0.name, $0) })
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        return ctx.statuses.values.filter { st in
            guard st.state == "poweredOff", let p = powerRecord(st.name, ctx), p.state == "standby", let h = hosts[st.name],
                PowerDrivers.can(true, h, power) == nil
            else { return false }
            return p.error == nil || now - p.sinceMs >= Self.powerOnRetryMs
        }.sorted { a, b in
            let ia = ctx.inventories[a.name], ib = ctx.inventories[b.name]
            return ((ia?.memory.totalMiB ?? 0), b.name) > ((ib?.memory.totalMiB ?? 0), a.name)
        }.map(\.name)
    }

    static func guestCPUCount(_ inv: HostInventory) -> Int { inv.guestCPUs?.count ?? inv.cpu.cpus }

    /// What DRS (and DPM, when on) would do now.
    public func drsPlan() async throws -> DRSPlanView {
        let started = DispatchTime.now().uptimeNanoseconds
        let ctx = try await drsContext()
        var view = plan(ctx)
        view.elapsedMs = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e6
        return view
    }

    /// `packing`: whether DPM's consolidation may replace balancing (not when DRS runs on its own while
    /// DPM is only advising: its packing moves without the power-off would just undo the balance).
    func plan(_ ctx: DRSContext, packing: Bool = true) -> DRSPlanView {
        let s = DRSSettingsResolved(ctx.manifest)
        let cost = moveCost(ctx)
        let advice = powerAdvice(ctx, s)
        var power = DRSPlanView.PowerView(automation: s.dpmAutomation, advice: advice.action.rawValue, reason: advice.reason, hostsToPowerOn: [], hostsToPowerOff: [])
        let loadsBefore = Balancer.loads(ctx.state, vms: ctx.vms, demand: ctx.demand)

        func priced(_ m: Move) -> DRSPlanView.MoveView {
            let c = cost(m.vm, m.from, m.to)
            return DRSPlanView.MoveView(vm: m.vm, from: m.from, to: m.to, batch: m.batch, reason: m.reason, predictedMs: Int64(c.seconds * 1000))
        }
        func loadViews(_ after: [HostLoad]) -> [DRSPlanView.LoadView] {
            let a = Dictionary(uniqueKeysWithValues: after.map { ($0.host, $0) })
            return loadsBefore.map { DRSPlanView.LoadView(host: $0.host, cpu: $0.cpu, memory: $0.memory, cpuAfter: a[$0.host]?.cpu, memoryAfter: a[$0.host]?.memory) }
        }

        if advice.action == .consolidate && packing {
            let hosts = Dictionary(uniqueKeysWithValues: (ctx.manifest.hosts ?? []).map { ($0.name, $0) })
            var keepOn: [String: String] = [:]
            for h in ctx.state.hosts where h.state == .connected {
                if let why = hosts[h.name].flatMap({ PowerDrivers.can(false, $0, self.power) }) { keepOn[h.name] = "cannot be powered off: \(why)" }
                if h.vms.contains(where: { ctx.pinned.contains($0) }) { keepOn[h.name] = "runs a VM that cannot move now (migrating or not running)" }
                if let p = powerRecord(h.name, ctx), p.state == "on", let e = p.error,
                    Int64(Date().timeIntervalSince1970 * 1000) - p.sinceMs < Self.powerOnRetryMs
                {
                    keepOn[h.name] = "\(e) lately"
                }
            }
            let c = Consolidator(
                spareHosts: s.spareHosts, maxOutgoingPerHost: s.maxOut, maxIncomingPerHost: s.maxIn, maxLoad: s.power.targetUtilization,
                demand: ctx.demand, keepOn: keepOn
            ).plan(ctx.state, vms: ctx.vms)
            if !c.hostsToPowerOff.isEmpty {
                power.hostsToPowerOff = c.hostsToPowerOff
                var after = ctx.state
                for m in c.moves {
                    guard let vm = ctx.vms[m.vm], let f = after.hosts.firstIndex(where: { $0.name == m.from }),
                        let t = after.hosts.firstIndex(where: { $0.name == m.to })
                    else { continue }
                    after.hosts[f].remove(vm)
                    after.commit(vm, to: t)
                }
                for i in after.hosts.indices where c.hostsToPowerOff.contains(after.hosts[i].name) { after.hosts[i].state = .poweredOff }
                let loadsAfter = Balancer.loads(after, vms: ctx.vms, demand: ctx.demand)
                return DRSPlanView(
                    kind: "consolidate", automation: s.automation, migrationThreshold: s.threshold,
                    imbalanceBefore: Balancer.imbalance(loadsBefore), imbalanceAfter: Balancer.imbalance(loadsAfter), tolerance: nil,
                    moves: c.moves.map(priced),
                    kept: c.kept.map { DRSPlanView.KeptView(vm: $0.vm, host: $0.host, reason: $0.reason) }
                        + [DRSPlanView.KeptView(reason: "DPM packs instead of balancing: \(advice.reason)")],
                    loads: loadViews(loadsAfter), power: power, elapsedMs: 0)
            }
            power.advice = "none"
            power.reason = advice.reason + "; but no host can be emptied and powered off: "
                + (c.kept.filter { $0.host != nil }.map { "\($0.host!) \($0.reason)" }.joined(separator: "; "))
        }
        if advice.action == .powerOn { power.hostsToPowerOn = advice.hosts }

        let b = Balancer(migrationThreshold: s.threshold, minGain: s.minGain, maxMoves: s.maxMoves, maxOutgoingPerHost: s.maxOut, maxIncomingPerHost: s.maxIn)
            .plan(ctx.state, vms: ctx.vms, demand: ctx.demand, pinned: ctx.pinned, cost: cost)
        return DRSPlanView(
            kind: "balance", automation: s.automation, migrationThreshold: s.threshold, imbalanceBefore: b.imbalanceBefore,
            imbalanceAfter: b.imbalanceAfter, tolerance: b.tolerance.isFinite ? b.tolerance : nil, moves: b.moves.map(priced),
            kept: b.kept.map { DRSPlanView.KeptView(vm: $0.vm, host: $0.host, reason: $0.reason) },
            loads: loadViews(b.loadsAfter), power: power, elapsedMs: 0)
    }

    // MARK: Jobs

    /// Starts carrying out the current plan: its moves batch by batch, then its power actions (when DPM is
    /// not off). A woken host counts once its agent reports; DRS then plans again and moves VMs onto it.
    public func startDRSApply(by: String, moves includeMoves: Bool = true, power includePower: Bool = true) async throws -> JobView {
        if let running = jobs.running(kind: "drs-apply") { throw Conflict("a DRS apply is already running (job \(running.id))") }
        let ctx = try await drsContext()
        let plan = plan(ctx, packing: includePower)
        var items: [JobView.Item] = []
        if includeMoves || plan.kind == "consolidate" && includePower {
            items += plan.moves.map { JobView.Item(action: "move", vm: $0.vm, from: $0.from, to: $0.to, batch: $0.batch, reason: $0.reason) }
        }
        if includePower && plan.power.automation != "off" {
            items += plan.power.hostsToPowerOff.map { JobView.Item(action: "power-off", host: $0, reason: plan.power.reason) }
            items += plan.power.hostsToPowerOn.map { JobView.Item(action: "power-on", host: $0, reason: plan.power.reason) }
        }
        guard let job = jobs.startIfNone(kind: "drs-apply", host: nil, items: items, notes: ["requested by \(by); plan: \(plan.kind), imbalance \(Self.round3(plan.imbalanceBefore)) → \(Self.round3(plan.imbalanceAfter))"])
        else { throw Conflict("a DRS apply is already running") }
        try await store.addEvent(source: "controller", kind: "drs", name: nil, event: "apply-started", detail: "job \(job.id)", message: "\(items.count) actions, by \(by)")
        Task { await self.runDRSJob(job.id) }
        return job
    }

    static func round3(_ x: Double) -> Double { (x * 1000).rounded() / 1000 }

    func runDRSJob(_ id: Int) async {
        do {
            try await runMoves(id)
            for item in jobs.get(id)?.items ?? [] where item.action == "power-off" {
                try await powerOff(item.host!, job: id)
            }
            for item in jobs.get(id)?.items ?? [] where item.action == "power-on" {
                if try await powerOn(item.host!, job: id) {
                    // Let DRS use the woken host: plan the balance again and carry it out.
                    let ctx = try await drsContext()
                    let next = plan(ctx)
                    let base = (jobs.get(id)?.items.compactMap(\.batch).max() ?? 0)
                    let more = next.kind == "balance" ? next.moves : []
                    jobs.update(id) { j in
                        j.notes.append("\(item.host!) is back: DRS planned \(more.count) moves (imbalance \(Self.round3(next.imbalanceBefore)) → \(Self.round3(next.imbalanceAfter)))")
                        j.items += more.map { JobView.Item(action: "move", vm: $0.vm, from: $0.from, to: $0.to, batch: base + $0.batch, reason: $0.reason) }
                    }
                    try await runMoves(id)
                }
            }
            jobs.finish(id)
        } catch {
            jobs.update(id) { $0.notes.append("stopped: \(error)") }
            jobs.finish(id, failed: true)
        }
        if let j = jobs.get(id) {
            _ = try? await store.addEvent(source: "controller", kind: "drs", name: j.host, event: "\(j.kind)-\(j.state)", detail: "job \(id)", message: j.notes.last)
        }
    }

    /// Runs the job's pending moves, batch by batch: a batch's migrations are requested together and
    /// the next batch waits until they all ended. A move that cannot start is reported; the others go on.
    func runMoves(_ id: Int) async throws {
        let batches = Set((jobs.get(id)?.items ?? []).filter { $0.action == "move" && $0.state == "pending" }.compactMap(\.batch)).sorted()
        for b in batches {
            if jobs.isCancelled(id) {
                jobs.update(id) { j in
                    for i in j.items.indices where j.items[i].state == "pending" { j.items[i].state = "skipped"; j.items[i].error = "cancelled" }
                }
                return
            }
            let items = (jobs.get(id)?.items ?? []).enumerated().filter { $0.element.action == "move" && $0.element.batch == b && $0.element.state == "pending" }
            var started: [(Int, String)] = []
            for (i, item) in items {
                do {
                    let m = try await requestMigration(vm: item.vm!, MigrateRequest(to: item.to!))
                    jobs.update(id) { $0.items[i].state = "running"; $0.items[i].migration = m.name }
                    started.append((i, m.name))
                } catch {
                    jobs.update(id) { $0.items[i].state = "failed"; $0.items[i].error = "\(error)" }
                }
            }
            while !started.isEmpty {
                try await Task.sleep(for: .milliseconds(500))
                if jobs.isCancelled(id) {
                    // Maintenance taken back: what is still queued is cancelled; what runs finishes.
                    for (_, name) in started where (try? await migrationView(name))?.state == "queued" { _ = try? await cancelMigration(name) }
                }
                var left: [(Int, String)] = []
                for (i, name) in started {
                    guard let m = try await migrationView(name) else { continue }
                    if m.isFinished {
                        jobs.update(id) { j in
                            j.items[i].state = m.state == "completed" ? "done" : "failed"
                            if m.state != "completed" { j.items[i].error = m.error ?? m.state }
                        }
                    } else {
                        left.append((i, name))
                    }
                }
                started = left
            }
        }
    }

    /// Powers an empty host off through its driver; it then counts as in standby (DPM may wake it).
    func powerOff(_ host: String, job: Int) async throws {
        guard let i = jobs.get(job)?.items.firstIndex(where: { $0.action == "power-off" && $0.host == host }) else { return }
        let manifest = try await desired()
        let vmsThere = try await store.vmStatuses().filter { $0.host == host }.map(\.name)
        let incoming = try await store.activeMigrations().filter { $0.destination == host || $0.source == host }
        guard vmsThere.isEmpty && incoming.isEmpty, let h = manifest.hosts?.first(where: { $0.name == host }) else {
            jobs.update(job) { $0.items[i].state = "skipped"; $0.items[i].error = "not empty: \(vmsThere.joined(separator: ", "))" }
            return
        }
        jobs.update(job) { $0.items[i].state = "running" }
        do {
            _ = try await PowerDrivers.run(false, h, power)
        } catch {
            jobs.update(job) { $0.items[i].state = "failed"; $0.items[i].error = "\(error)" }
            try await store.addEvent(source: "controller", kind: "host", name: host, event: "power-off-failed", detail: h.power?.driver, message: "\(error)")
            // Recorded: DPM leaves the host on for a while instead of retrying at every pass.
            if var st = try await store.hostStatuses().first(where: { $0.name == host }) {
                st.power = Self.json(PowerRecord(state: "on", sinceMs: Int64(Date().timeIntervalSince1970 * 1000), by: "dpm", error: "power-off failed: \(error)"))
                try await store.setHostStatus(st)
            }
            return
        }
        // The grace for a host still shutting down counts from the driver's return.
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let prev = try await store.hostStatuses().first { $0.name == host }
        let record = PowerRecord(state: "standby", sinceMs: now, by: "dpm", reason: jobs.get(job)?.items[i].reason)
        try await store.setHostStatus(.init(name: host, state: "poweredOff", inventory: prev?.inventory, message: "powered off (standby) by dpm", power: Self.json(record)))
        try await store.addEvent(source: "controller", kind: "host", name: host, event: "powered-off", detail: h.power?.driver, message: record.reason)
        demand.forget(host: host)
        demand.resetSamples()
        jobs.update(job) { $0.items[i].state = "done" }
    }

    /// Wakes a host through its driver and waits until its agent reports (the power-on timeout at most).
    func powerOn(_ host: String, job: Int) async throws -> Bool {
        guard let i = jobs.get(job)?.items.firstIndex(where: { $0.action == "power-on" && $0.host == host }) else { return false }
        let manifest = try await desired()
        guard let h = manifest.hosts?.first(where: { $0.name == host }) else { return false }
        jobs.update(job) { $0.items[i].state = "running" }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let prev = try await store.hostStatuses().first { $0.name == host }
        let record = PowerRecord(state: "poweringOn", sinceMs: now, by: "dpm", reason: jobs.get(job)?.items[i].reason)
        try await store.setHostStatus(.init(name: host, state: "poweredOff", inventory: prev?.inventory, message: "powering on", power: Self.json(record)))
        try await store.addEvent(source: "controller", kind: "host", name: host, event: "power-on-requested", detail: h.power?.driver, message: record.reason)
        do {
            _ = try await PowerDrivers.run(true, h, power)
        } catch {
            let failed = PowerRecord(state: "standby", sinceMs: now, by: "dpm", reason: record.reason, error: "\(error)")
            try await store.setHostStatus(.init(name: host, state: "poweredOff", inventory: prev?.inventory, message: "power-on failed: \(error)", power: Self.json(failed)))
            jobs.update(job) { $0.items[i].state = "failed"; $0.items[i].error = "\(error)" }
            return false
        }
        let timeout = Double(manifest.settings?.dpm?.powerOnTimeoutSeconds ?? 600)
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            try await Task.sleep(for: .milliseconds(500))
            if let s = try await store.hostStatuses().first(where: { $0.name == host }), s.state == "connected" || s.state == "maintenance" {
                jobs.update(job) { $0.items[i].state = "done" }
                return true
            }
        }
        jobs.update(job) { $0.items[i].state = "failed"; $0.items[i].error = "the agent did not report back within \(Int(timeout)) s" }
        return false
    }

    // MARK: Maintenance mode

    /// Puts a host into maintenance (no new VMs; every VM leaves: running ones live, stopped ones by
    /// moving their definition) or takes it out again.
    public func setMaintenance(_ host: String, enabled: Bool) async throws -> JobView? {
        let manifest = try await desired()
        guard manifest.hosts?.contains(where: { $0.name == host }) == true else { throw ControllerServer.NotFound(what: "host \(host)") }
        let prev = try await store.hostStatuses().first { $0.name == host }
        if !enabled {
            guard prev?.state == "maintenance" else { return nil }
            if let j = jobs.running(kind: "maintenance", host: host) { jobs.cancel(j.id) }
            try await store.setHostStatus(.init(name: host, state: "connected", inventory: prev?.inventory, message: nil, power: prev?.power))
            try await store.addEvent(source: "controller", kind: "host", name: host, event: "maintenance-off", detail: nil, message: nil)
            return nil
        }
        guard let prev, prev.state == "connected" || prev.state == "maintenance" else {
            throw Conflict("\(host) is \(prev?.state ?? "unknown"); only a connected host enters maintenance")
        }
        if let j = jobs.running(kind: "maintenance", host: host) { return j }
        try await store.setHostStatus(.init(name: host, state: "maintenance", inventory: prev.inventory, message: "entering maintenance", power: prev.power))
        try await store.addEvent(source: "controller", kind: "host", name: host, event: "maintenance-on", detail: nil, message: nil)
        guard let job = jobs.startIfNone(kind: "maintenance", host: host, items: [], notes: []) else {
            return jobs.running(kind: "maintenance", host: host)
        }
        Task { await self.evacuate(host, job: job.id) }
        return job
    }

    /// Moves every VM off `host`: each to the host the scheduler picks among the connected ones (spread),
    /// counted as it goes. A VM that fits nowhere or fails to move is reported and the others go on.
    func evacuate(_ host: String, job: Int) async {
        do {
            let manifest = try await desired()
            var (state, _) = try await snapshot(manifest)
            let specs = Dictionary(uniqueKeysWithValues: (manifest.vms ?? []).map { ($0.name, $0) })
            let statuses = try await store.vmStatuses().filter { $0.host == host }
            let active = Set(try await store.activeMigrations().map(\.vm))
            let scheduler = Scheduler(strategy: .spread)
            var items: [JobView.Item] = []
            var cold: [(Store.VMStatus, String)] = []
            for s in statuses.sorted(by: { $0.name < $1.name }) {
                guard let spec = specs[s.name] else { continue }
                var item = JobView.Item(action: "move", vm: s.name, from: host, batch: 1, reason: "evacuating \(host) for maintenance")
                let vm = ClusterSnapshot.vm(spec)
                if active.contains(s.name) {
                    item.state = "skipped"
                    item.error = "already migrating"
                } else if let to = scheduler.choose(vm, state: state) {
                    item.to = state.hosts[to].name
                    if let from = state.hosts.firstIndex(where: { $0.name == host }) { state.hosts[from].remove(vm) }
                    state.commit(vm, to: to)
                    if s.state != "running" && s.state != "paused" {
                        if spec.disks.isEmpty {
                            cold.append((s, state.hosts[to].name))
                        } else {
                            item.state = "failed"
                            item.error = "\(s.state) with disks: start it so it moves live, or move it by hand"
                        }
                    }
                } else {
                    item.state = "failed"
                    item.error = "no host takes it: " + scheduler.explain(vm, state: state).summary
                }
                items.append(item)
            }
            // VMs that fit nowhere: with DPM on, a standby host is woken for them first (as vSphere does).
            let homeless = items.indices.filter { items[$0].state == "failed" && items[$0].to == nil }
            if !homeless.isEmpty, (manifest.settings?.dpm?.automation ?? "off") != "off" {
                let ctx = try await drsContext()
                if let wake = standbyHosts(ctx).first {
                    jobs.update(job) { $0.items.append(JobView.Item(action: "power-on", host: wake, reason: "room for the VMs leaving \(host)")) }
                    if try await powerOn(wake, job: job) {
                        var (again, _) = try await snapshot(try await desired())
                        for i in homeless {
                            guard let name = items[i].vm, let spec = specs[name] else { continue }
                            let vm = ClusterSnapshot.vm(spec)
                            if let from = again.hosts.firstIndex(where: { $0.name == host }) { again.hosts[from].remove(vm) }
                            if let to = scheduler.choose(vm, state: again) {
                                again.commit(vm, to: to)
                                items[i].to = again.hosts[to].name
                                items[i].state = "pending"
                                items[i].error = nil
                            }
                        }
                    }
                }
            }
            let powerItems = jobs.get(job)?.items ?? []
            jobs.update(job) { $0.items = powerItems + items; $0.notes.append("\(items.count) VMs on \(host)") }
            // Stopped VMs: their definition moves (the reconciler defines them on the new host).
            for (s, to) in cold {
                guard let i = jobs.get(job)?.items.firstIndex(where: { $0.action == "move" && $0.vm == s.name }),
                    let agent = try await agentURL(host)
                else { continue }
                // The reconciler leaves it alone meanwhile: between the undefine and the new status it would
                // take the VM for undefined behind its back and define it here again.
                movingDefinitions.withLock { _ = $0.insert(s.name) }
                defer { movingDefinitions.withLock { _ = $0.remove(s.name) } }
                do {
                    try await agents.undefine(agent, s.name)
                    var moved = s
                    moved.host = to
                    moved.uuid = nil
                    try await store.setVMStatus(moved)
                    jobs.update(job) { $0.items[i].state = "done"; $0.items[i].reason = "stopped: definition moved to \(to)" }
                } catch {
                    jobs.update(job) { $0.items[i].state = "failed"; $0.items[i].error = "\(error)" }
                }
            }
            try await runMoves(job)
            let left = try await store.vmStatuses().filter { $0.host == host }.map(\.name)
            let message = left.isEmpty ? "in maintenance: empty" : "in maintenance; still here: \(left.sorted().joined(separator: ", "))"
            if let s = try await store.hostStatuses().first(where: { $0.name == host }), s.state == "maintenance" {
                var s = s
                s.message = message
                try await store.setHostStatus(s)
            }
            jobs.update(job) { $0.notes.append(message) }
            jobs.finish(job)
        } catch {
            jobs.update(job) { $0.notes.append("stopped: \(error)") }
            jobs.finish(job, failed: true)
        }
        if let j = jobs.get(job) {
            _ = try? await store.addEvent(source: "controller", kind: "host", name: host, event: "evacuation-\(j.state)", detail: "job \(job)", message: j.notes.last)
        }
    }

    public func jobView(_ id: Int) -> JobView? { jobs.get(id) }
    public func jobViews() -> [JobView] { jobs.all() }

    // MARK: DPM status

    public func dpmStatus() async throws -> DPMStatusView {
        let ctx = try await drsContext()
        let s = DRSSettingsResolved(ctx.manifest)
        let advice = powerAdvice(ctx, s)
        let loads = Dictionary(uniqueKeysWithValues: (demand.samples().last?.loads ?? []).map { ($0.host, $0) })
        let samples = demand.samples()
        let history = samples.count > 1 ? Double(samples.last!.timeMs - samples.first!.timeMs) / 1000 : 0
        let hosts = (ctx.manifest.hosts ?? []).map { h -> DPMStatusView.HostPower in
            let st = ctx.statuses[h.name]
            let p = powerRecord(h.name, ctx)
            return DPMStatusView.HostPower(
                host: h.name, state: st?.state ?? "disconnected", power: p?.state ?? (st?.state == "poweredOff" ? "off" : "on"),
                driver: h.power?.driver, since: p.map { Self.clock($0.sinceMs) }, by: p?.by, reason: p?.reason, error: p?.error,
                cpu: loads[h.name]?.cpu, memory: loads[h.name]?.memory)
        }
        return DPMStatusView(
            automation: s.dpmAutomation, targetUtilization: Int((s.power.targetUtilization * 100).rounded()),
            tolerance: Int((s.power.tolerance * 100).rounded()), powerOnSustainSeconds: Int(s.power.powerOnSustainSeconds),
            powerOffSustainSeconds: Int(s.power.powerOffSustainSeconds), spareHosts: s.spareHosts, historySeconds: history,
            advice: advice.action.rawValue, reason: advice.reason, hosts: hosts)
    }

    /// One pass of the automation: fully automated DRS applies its plan every interval; automated DPM
    /// applies power actions when its hysteresis says so.
    func automate(lastDRS: inout Date) async throws {
        guard jobs.running(kind: "drs-apply") == nil else { return }
        let manifest = try await desired()
        let s = DRSSettingsResolved(manifest)
        let drsDue = s.automation == "fullyAutomated" && Date().timeIntervalSince(lastDRS) >= Double(s.interval)
        let dpmOn = s.dpmAutomation == "automated"
        guard drsDue || dpmOn else { return }
        let ctx = try await drsContext()
        let p = plan(ctx, packing: dpmOn)
        let powerDue = dpmOn && (!p.power.hostsToPowerOn.isEmpty || !p.power.hostsToPowerOff.isEmpty)
        let movesDue = drsDue && !p.moves.isEmpty
        if drsDue { lastDRS = Date() }
        guard powerDue || movesDue else { return }
        _ = try await startDRSApply(by: "automation", moves: drsDue, power: powerDue)
    }
}

/// DRS applies and evacuations, in memory (a restarted controller plans again).
final class JobRegistry: Sendable {
    private let state = Mutex<(next: Int, jobs: [Int: JobView], cancelled: Set<Int>)>((1, [:], []))

    /// Starts a job unless one of the same kind (and host) is running: checked and recorded in one step.
    func startIfNone(kind: String, host: String?, items: [JobView.Item], notes: [String]) -> JobView? {
        state.withLock { s in
            if s.jobs.values.contains(where: { $0.kind == kind && !$0.isFinished && $0.host == host }) { return nil }
            let job = JobView(id: s.next, kind: kind, host: host, state: "running", startedMs: Int64(Date().timeIntervalSince1970 * 1000), items: items, notes: notes)
            s.jobs[s.next] = job
            s.next += 1
            // Keep the last 50.
            if s.jobs.count > 50, let oldest = s.jobs.values.filter(\.isFinished).map(\.id).min() { s.jobs[oldest] = nil }
            return job
        }
    }

    func get(_ id: Int) -> JobView? { state.withLock { $0.jobs[id] } }
    func isRunning(_ id: Int) -> Bool { state.withLock { $0.jobs[id].map { !$0.isFinished } ?? false } }
    func all() -> [JobView] { state.withLock { $0.jobs.values.sorted { $0.id < $1.id } } }
    func running(kind: String, host: String? = nil) -> JobView? {
        state.withLock { $0.jobs.values.first { $0.kind == kind && !$0.isFinished && (host == nil || $0.host == host) } }
    }
    func update(_ id: Int, _ body: (inout JobView) -> Void) {
        state.withLock { s in if var j = s.jobs[id] { body(&j); s.jobs[id] = j } }
    }
    func cancel(_ id: Int) { state.withLock { _ = $0.cancelled.insert(id) } }
    func isCancelled(_ id: Int) -> Bool { state.withLock { $0.cancelled.contains(id) } }

    func finish(_ id: Int, failed: Bool = false) {
        update(id) { j in
            j.finishedMs = Int64(Date().timeIntervalSince1970 * 1000)
            let bad = j.items.contains { $0.state == "failed" || $0.state == "skipped" }
            j.state = failed ? "failed" : bad ? "partial" : "done"
        }
    }
}

/// Samples demand after each observation and runs DRS/DPM automation every two seconds.
public final class DRSLoop: Service, Sendable {
    let controller: Controller

    public init(controller: Controller) { self.controller = controller }

    public func run() async throws {
        var last = Date()
        while !Task.isCancelledOrShuttingDown {
            try? await Task.sleep(for: .seconds(2))
            do {
                try await controller.automate(lastDRS: &last)
            } catch {
                controller.logger.warning("DRS automation pass failed", metadata: ["error": "\(error)"])
            }
        }
    }
}

extension Task where Success == Never, Failure == Never {
    static var isCancelledOrShuttingDown: Bool { Task.isCancelled || Task.isShuttingDownGracefully }
}
