import AgentAPI
import ClusterModel
import ControllerAPI
import Foundation
import Logging
import Placement
import ServiceLifecycle
import Store
import Synchronization

extension Controller {
    struct Observed {
        var inventories: [String: HostInventory] = [:]
        /// VM name → hosts that have a domain of that name, with its status there.
        var vms: [String: [(host: String, status: AgentAPI.VMStatus)]] = [:]
    }

    /// Asks every host's agent what it runs; records host states.
    func observe(_ manifest: ClusterManifest) async throws -> Observed {
        var observed = Observed()
        let hosts = (manifest.hosts ?? []).filter { $0.agent != nil }
        typealias Seen = (HostInventory, [AgentAPI.VMStatus], [VMStats]?)
        let collected = Collected<(String, Result<Seen, any Error>)>()
        await withTaskGroup(of: Void.self) { group in
            for h in hosts {
                group.addTask {
                    // One call after the other, not three `async let`s: an `async let` left running
                    // when another one throws is among the shapes Swift 6.3's release build tears down
                    // out of order (swiftlang/swift#81771); an agent that does not answer its first
                    // call is down for this pass anyway.
                    do {
                        let inv = try await self.agents.inventory(h.agent!)
                        let vms = try await self.agents.vms(h.agent!)
                        let stats = try? await self.agents.stats(h.agent!)
                        collected.append((h.name, .success((inv, vms, stats))))
                    } catch {
                        collected.append((h.name, .failure(error)))
                    }
                }
            }
        }
        let results = collected.all
        let previous = Dictionary(uniqueKeysWithValues: try await store.hostStatuses().map { ($0.name, $0) })
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let window = Double(manifest.settings?.drs?.demandWindowSeconds ?? 60)
        let powerOnTimeout = Int64(manifest.settings?.dpm?.powerOnTimeoutSeconds ?? 600) * 1000
        for (name, result) in results {
            let prev = previous[name]
            var power = prev?.power.flatMap { Self.decode(PowerRecord.self, $0) }
            switch result {
            case .success(let (inv, vms, stats)):
                observed.inventories[name] = inv
                for vm in vms { observed.vms[vm.name, default: []].append((name, vm)) }
                // Statistics that failed this time leave the last measurement in place.
                if let stats { demand.record(host: name, stats: stats, nowMs: now, windowSeconds: window) }
                var state = prev?.state == "maintenance" ? "maintenance" : "connected"
                var event = state
                if let p = power, p.state != "on" {
                    if p.state == "standby" || p.state == "off", now - p.sinceMs < Self.powerOffGraceMs {
                        // Still shutting down after its power-off: not back.
                        state = "poweredOff"
                    } else {
                        // Back: a wake-up DPM asked for counts only now, when the agent reports.
                        event = p.state == "poweringOn" ? "powered-on" : "powered-on-externally"
                        power = PowerRecord(state: "on", sinceMs: now, by: p.state == "poweringOn" ? p.by : "observed", reason: p.reason)
                        demand.resetSamples()
                    }
                }
                if prev?.state != state || event != state {
                    try await store.addEvent(source: "controller", kind: "host", name: name, event: event, detail: nil, message: power?.reason)
                }
                // Written when something that matters changed, and every 30 s for the free-memory figures:
                // a write per host and pass (each one synced to disk) would hold the store up for nothing.
                let next = Store.HostStatus(name: name, state: state, inventory: Self.json(inv), message: nil, power: power.map { Self.json($0) })
                let due = hostStatusWrites.withLock { now - ($0[name] ?? 0) >= 30_000 }
                if due || prev.map({ !Self.sameObservation($0, next) }) ?? true {
                    try await store.setObservedHostStatus(next, previous: prev)
                    hostStatusWrites.withLock { $0[name] = now }
                }
            case .failure(let error):
                demand.forget(host: name)
                if let p = power, p.state != "on" {
                    // Powered off on purpose: not a disconnection. A wake-up that takes too long failed.
                    var message = p.state == "poweringOn" ? "powering on since \(Self.clock(p.sinceMs))" : "powered off (\(p.state)) by \(p.by)"
                    if p.state == "poweringOn" && now - p.sinceMs > powerOnTimeout {
                        power = PowerRecord(state: "standby", sinceMs: now, by: p.by, reason: p.reason,
                                            error: "did not report back within \(powerOnTimeout / 1000) s of its power-on")
                        message = "power-on failed: \(power!.error!)"
                        try await store.addEvent(source: "controller", kind: "host", name: name, event: "power-on-failed", detail: nil, message: power!.error)
                    }
                    try await store.setObservedHostStatus(.init(name: name, state: "poweredOff", inventory: prev?.inventory, message: message, power: power.map { Self.json($0) }), previous: prev)
                    continue
                }
                if prev?.state != "disconnected" {
                    try await store.addEvent(source: "controller", kind: "host", name: name, event: "disconnected", detail: nil, message: "\(error)")
                }
                try await store.setObservedHostStatus(.init(name: name, state: "disconnected", inventory: prev?.inventory, message: "\(error)", power: prev?.power), previous: prev)
            }
        }
        return observed
    }

    /// Whether two observations of a host differ only in figures that move all the time (free memory).
    static func sameObservation(_ a: Store.HostStatus, _ b: Store.HostStatus) -> Bool {
        guard a.state == b.state, a.message == b.message, a.power == b.power else { return false }
        func steady(_ text: String?) -> HostInventory? {
            guard var inv = text.flatMap({ decode(HostInventory.self, $0) }) else { return nil }
            inv.memory.freeMiB = 0
            inv.capacity.freeMemoryMiB = 0
            return inv
        }
        guard let x = steady(a.inventory), let y = steady(b.inventory) else { return false }
        return x == y
    }

    /// The volume of a VM's disk in its storage pool.
    static func volumeName(vm: String, disk: Int) -> String { "\(vm)-disk\(disk)" }

    /// Resolves a manifest VM into what an agent runs: networks become host bridges, disks in storage
    /// pools the paths of their volumes (made by `ensureVolumes` before the VM is defined).
    func hostSpec(_ spec: VMSpec, manifest: ClusterManifest) throws -> VMSpec {
        var s = spec
        s.placement = nil
        s.host = nil
        s.powerState = nil
        let networks = Dictionary(uniqueKeysWithValues: (manifest.networks ?? []).map { ($0.name, $0) })
        for i in s.nics.indices {
            guard s.nics[i].bridge == nil, let net = s.nics[i].network else { continue }
            s.nics[i] = Self.hostNIC(s.nics[i], network: networks[net])
        }
        if let pool = s.resourcePool { s.resourcePoolPath = Self.poolPath(pool, pools: manifest.resourcePools ?? []) }
        let storage = Dictionary((manifest.storagePools ?? []).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for (i, d) in s.disks.enumerated() where d.path == nil {
            guard let name = d.pool, let pool = storage[name] else {
                throw AgentClient.Failure(status: 0, message: "disks[\(i)]: no storage pool \(d.pool ?? "-")")
            }
            let volume = Self.volumeName(vm: spec.name, disk: i)
            switch pool.type {
            case "dir", "shared": s.disks[i].path = (pool.path ?? "") + "/" + volume
            case "logical":
                s.disks[i].path = "/dev/\(pool.volumeGroup ?? "")/\(volume)"
                s.disks[i].format = "raw"
            case "rbd":
                guard let r = pool.rbd else { throw AgentClient.Failure(status: 0, message: "disks[\(i)]: pool \(name) names no Ceph pool") }
                s.disks[i].rbd = .init(image: "\(r.pool)/\(volume)", monitors: r.monitors, user: r.user, secretUUID: r.secretUUID)
                s.disks[i].format = "raw"
            default:
                throw AgentClient.Failure(status: 0, message: "disks[\(i)]: pool \(name) is \(pool.type), which no host attaches")
            }
            if d.format == nil && pool.type != "logical" && pool.type != "rbd" { s.disks[i].format = "qcow2" }
            s.disks[i].pool = nil
            s.disks[i].sizeGiB = nil
            s.disks[i].from = nil
            s.disks[i].clone = nil
        }
        return s
    }

    /// One reconcile pass. Returns the number of actions taken.
    @discardableResult
    public func reconcile() async throws -> Int {
        // Generations before the manifest: an apply landing in between pairs a newer spec with an older
        // generation (updated next pass), never an older spec with a newer generation (taken for drift).
        let generations = Dictionary(uniqueKeysWithValues: try await store.objects(kind: "vm").map { ($0.name, $0.generation) })
        // Migrations and definition moves before observing: a VM that was moving when the hosts were
        // asked is left alone this pass, even if its move has ended by the time it is looked at.
        let migratingBefore = Set(try await store.activeMigrations().filter { $0.state != "queued" }.map(\.vm))
        let movingBefore = movingDefinitions.withLock { $0 }
        let manifest = try await desired()
        let observed = try await observe(manifest)
        do {
            try await recordLoads(manifest, inventories: observed.inventories)
        } catch {
            logger.warning("recording host loads failed", metadata: ["error": "\(error)"])
        }
        // Resource pools first: a VM's partition must exist on its host before it is defined or started.
        await enforcePools(manifest, observed: observed)
        await pushRevocations(manifest, observed: observed)
        // Storage pools before defining: a VM's volumes are made in them.
        await enforceStorage(manifest, observed: observed)
        // Networks before defining: a VM's NICs plug into their bridges.
        await enforceNetworks(manifest, observed: observed)
        let hostsByName = Dictionary(uniqueKeysWithValues: (manifest.hosts ?? []).map { ($0.name, $0) })
        var statuses = Dictionary(uniqueKeysWithValues: try await store.vmStatuses().map { ($0.name, $0) })
        var actions = 0
        let scheduler = Scheduler(strategy: ClusterSnapshot.strategy(manifest))
        // Placement's view, built once per pass (when a VM needs a host) and kept current as VMs are placed.
        var placementState: ClusterState?

        // The error of the last task that failed, for the VM's message.
        var lastFailure = ""
        func run(_ action: String, _ vm: String, _ host: String?, _ reason: String, _ body: () async throws -> Void) async throws -> Bool {
            actions += 1
            let task = try await store.addTask(action: action, kind: "vm", name: vm, host: host, reason: reason)
            do {
                try await body()
                try await store.finishTask(task, error: nil)
                try await store.addEvent(source: "controller", kind: "task", name: vm, event: action, detail: host, message: reason)
                return true
            } catch {
                lastFailure = "\(error)"
                try await store.finishTask(task, error: lastFailure)
                try await store.addEvent(source: "controller", kind: "task", name: vm, event: "\(action)-failed", detail: host, message: "\(error)")
                logger.warning("task failed", metadata: ["action": "\(action)", "vm": "\(vm)", "error": "\(error)"])
                return false
            }
        }

        // A migrating VM belongs to the migration loop until it ends (both hosts show it meanwhile).
        let migrating = migratingBefore.union(try await store.activeMigrations().filter { $0.state != "queued" }.map(\.vm)).union(movingBefore)
        // Every host of the cluster answered this pass: only then can "gone from its host" mean gone.
        let everyHostAnswered = (manifest.hosts ?? []).filter { $0.agent != nil }.allSatisfy { observed.inventories[$0.name] != nil }

        for spec in Scheduler.orderedSpecs(manifest.vms ?? []) {
            let name = spec.name
            if migrating.contains(name) || movingDefinitions.withLock({ $0.contains(name) }) { continue }
            let generation = generations[name] ?? 0
            var status = statuses[name] ?? Store.VMStatus(name: name, host: nil, state: "pending", uuid: nil, message: nil, generation: 0)
            let seen = observed.vms[name] ?? []

            // Where the VM is: a recorded host that has it, else any host that has it (adopted).
            let isActive = { (st: String) in ["running", "blocked", "paused", "pmsuspended"].contains(st) }
            // A copy that runs wins over the recorded host's (a VM migrated with virsh leaves a stopped
            // definition behind by default): the controller must never start a second copy.
            // The recorded host's copy wins when it runs too.
            var location = seen.first { $0.host == status.host && isActive($0.status.state) } ?? seen.first { isActive($0.status.state) }
                ?? seen.first { $0.host == status.host } ?? seen.first
            if let loc = location, status.host != loc.host {
                // Whether the old host still lists it (the source of a migration lists it until the
                // migration ends; virsh leaves a stopped definition by default) does not matter.
                if let was = status.host, status.uuid != nil,
                   !((try? await store.migrations(limit: 100)) ?? []).contains(where: { $0.vm == name && $0.destination == loc.host && $0.state == "completed" }) {
                    // Recorded on one host, found on another, and no migration of ours moved it.
                    await raise("moved:\(name):\(loc.host)", kind: "unexpected-move", name: name, host: loc.host,
                                message: "\(name) was on \(was) and is now on \(loc.host) without a migration by the controller")
                }
                status.host = loc.host
                try await store.addEvent(source: "controller", kind: "vm", name: name, event: "adopted", detail: loc.host, message: "found defined there")
            }
            if seen.count > 1 {
                status.message = "defined on \(seen.map(\.host).sorted().joined(separator: ", ")); keeping \(status.host ?? "?")"
            }

            let agentSpec: VMSpec
            do {
                agentSpec = try hostSpec(spec, manifest: manifest)
            } catch {
                status.state = "error"
                status.message = "\(error)"
                try await store.setVMStatus(status)
                continue
            }

            let restore = (manifest.settings?.security?.driftRepair ?? "restore") == "restore"
            if location == nil, status.uuid != nil, let h = status.host, observed.inventories[h] != nil,
               (try? await store.isAlarmOpen("migrated-away:\(name)")) == true {
                // Migrated outside the controller to a host it does not know: it runs there. Defining and
                // starting it here again would run it twice on the same disks.
                status.message = "live-migrated outside the controller to a host it does not manage; not restored (see get alarms)"
                try await store.setVMStatus(status)
                continue
            }
            if location == nil, status.uuid != nil, !everyHostAnswered {
                // Gone from its host, but a host that did not answer may run it: wait.
                status.message = "not found on the hosts that answered; waiting for every host before defining it again"
                try await store.setVMStatus(status)
                continue
            }
            // Hosts are asked one after another: a VM migrated outside the controller in between shows
            // on neither. Only a VM missing in two passes in a row is taken for undefined.
            let missing = location == nil && status.uuid != nil
            let missingBefore = missingVMs.withLock { m in
                let was = m.contains(name)
                if missing { m.insert(name) } else { m.remove(name) }
                return was
            }
            if missing && !missingBefore {
                status.message = "not found on any host; looking again next pass before defining it again"
                try await store.setVMStatus(status)
                continue
            }
            if location == nil, status.uuid != nil, let h = status.host, observed.inventories[h] != nil {
                // It was defined there, and nobody here removed it: undefined behind the controller's back.
                await raise("drift:\(name):undefined", kind: "drift", name: name, host: h,
                            message: "\(name) was undefined on \(h) outside the controller; " + (restore ? "defining it again" : "left so (driftRepair: alarm)"))
                if !restore {
                    status.message = "undefined outside the controller (drift alarm); driftRepair is alarm"
                    try await store.setVMStatus(status)
                    continue
                }
            } else if let loc = location, !loc.status.persistent, let agent = hostsByName[loc.host]?.agent {
                // Running on, but its definition was removed: a transient domain would vanish at its next stop.
                await raise("drift:\(name):undefined", kind: "drift", name: name, host: loc.host,
                            message: "\(name) was undefined on \(loc.host) outside the controller (still running, now transient); " + (restore ? "defining it again" : "left so (driftRepair: alarm)"))
                if restore {
                    _ = try await run("define", name, loc.host, "its definition was removed outside the controller") {
                        try await ensureVolumes(spec, agent: agent)
                        _ = try await agents.define(agent, agentSpec)
                    }
                }
            } else if location != nil {
                await clear("drift:\(name):undefined", note: "defined again")
                if let st = location?.status, st.definedVCPUs == agentSpec.cpus, st.definedMemoryMiB == agentSpec.memoryMiB {
                    await clear("drift:\(name):definition", note: "defined as desired again")
                }
                await clear("migrated-away:\(name)", note: "found on a host of the cluster")
            }
            if location == nil {
                // Not defined anywhere: define it on its recorded host, or place it first.
                var host = status.host.flatMap { h in observed.inventories[h] != nil ? h : nil }
                if host == nil && (status.host == nil || hostsByName[status.host!] == nil) {
                    if placementState == nil { placementState = try await snapshot(manifest).0 }
                    let state = placementState!
                    let vm = ClusterSnapshot.vm(spec)
                    if let i = scheduler.choose(vm, state: state) {
                        let chosen = state.hosts[i].name
                        placementState?.commit(vm, to: i)
                        host = chosen
                        status.host = chosen
                        status.state = "pending"
                        status.message = nil
                        // Recorded before the define: a restart finds the VM where it was sent.
                        _ = try await run("place", name, chosen, "\(scheduler.strategy.rawValue): best of the hosts every filter accepts") {
                            try await store.setVMStatus(status)
                        }
                    } else {
                        status.state = "pending"
                        status.message = "cannot be placed: " + scheduler.explain(vm, state: state).summary
                        try await store.setVMStatus(status)
                        continue
                    }
                }
                guard let host, let agent = hostsByName[host]?.agent else {
                    status.message = "waiting for host \(status.host ?? "?") to connect"
                    try await store.setVMStatus(status)
                    continue
                }
                var defined: AgentAPI.VMStatus?
                _ = try await run("define", name, host, "placed on \(host)") {
                    try await ensureVolumes(spec, agent: agent)
                    defined = try await agents.define(agent, agentSpec)
                }
                guard let defined else {
                    status.state = "error"
                    status.message = "define on \(host) failed"
                    try await store.setVMStatus(status)
                    continue
                }
                status.generation = generation
                status.uuid = defined.uuid
                location = (host, defined)
            } else if status.generation == generation, let loc = location, loc.status.persistent, let agent = hostsByName[loc.host]?.agent,
                      let cpus = loc.status.definedVCPUs, let mib = loc.status.definedMemoryMiB,
                      cpus != agentSpec.cpus || mib != agentSpec.memoryMiB {
                // The definition the controller gave this host was changed outside it.
                await raise("drift:\(name):definition", kind: "drift", name: name, host: loc.host,
                            message: "\(name)'s definition on \(loc.host) was changed outside the controller (\(cpus) vCPUs, \(mib) MiB; desired \(agentSpec.cpus), \(agentSpec.memoryMiB)); " + (restore ? "defining it again (applies at its next boot)" : "left so (driftRepair: alarm)"))
                if restore {
                    _ = try await run("define", name, loc.host, "its definition was changed outside the controller") {
                        try await ensureVolumes(spec, agent: agent)
                        _ = try await agents.define(agent, agentSpec)
                    }
                }
            } else if status.generation != generation, let loc = location, let agent = hostsByName[loc.host]?.agent {
                // The spec changed: update the definition (it applies at the next boot).
                var updated = true
                if location?.status.spec != agentSpec {
                    updated = try await run("update", name, loc.host, "spec changed (generation \(generation))") {
                        try await ensureVolumes(spec, agent: agent)
                        _ = try await agents.define(agent, agentSpec)
                    }
                }
                // A failed update is tried again next pass (and is not taken for drift meanwhile).
                if updated { status.generation = generation }
            }

            guard let loc = location, let agent = hostsByName[loc.host]?.agent else { continue }
            var state = loc.status.state
            let wantRunning = (spec.powerState ?? "running") == "running"
            let active = ["running", "blocked", "paused", "pmsuspended"].contains(state)
            if wantRunning && !active && statuses[name]?.state == "running" && statuses[name]?.host == loc.host {
                // Seen running on this host last time, meant to run, and the controller did not stop it.
                await raise("drift:\(name):state", kind: "drift", name: name, host: loc.host,
                            message: "\(name) stopped on \(loc.host) outside the controller (now \(state)); " + (restore ? "starting it again" : "left so (driftRepair: alarm)"))
            }
            if wantRunning && active { await clear("drift:\(name):state", note: "running again") }
            if wantRunning && !active && !restore, (try? await store.isAlarmOpen("drift:\(name):state")) == true {
                status.state = Self.viewState(state)
                status.message = "stopped outside the controller (drift alarm); driftRepair is alarm"
                if status != statuses[name] { try await store.setVMStatus(status) }
                statuses[name] = status
                continue
            }
            if wantRunning && !active && seen.contains(where: { $0.host != loc.host }) {
                // Another host has a definition of it too: starting one could run it twice on one set of
                // disks. An operator decides (the alarm says where).
                await raise("duplicate:\(name)", kind: "drift", name: name, host: loc.host,
                            message: "\(name) is defined on \(seen.map(\.host).sorted().joined(separator: ", ")) and runs nowhere; not started until only one definition is left")
                status.message = "defined on several hosts; not started (see get alarms)"
                status.state = Self.viewState(state)
                if status != statuses[name] { try await store.setVMStatus(status) }
                statuses[name] = status
                continue
            }
            // A host that cannot build one of the VM's networks cannot start it: say which and why,
            // instead of failing the same start at every pass.
            let unbuildable = networkState.withLock { $0[loc.host] }.flatMap { h in
                spec.nics.compactMap(\.network).sorted().lazy.compactMap { n in h.networks.first { $0.name == n && $0.error != nil } }.first
            }
            if wantRunning && !active, let n = unbuildable {
                status.message = "\(loc.host) cannot build network \(n.name): \(n.error!)"
                status.state = Self.viewState(state)
                if status != statuses[name] { try await store.setVMStatus(status) }
                statuses[name] = status
                continue
            }
            if wantRunning && !active {
                if try await run("start", name, loc.host, "desired power state is running", {
                    state = try await agents.action(agent, name, "start").state
                }) { status.message = nil } else { status.message = "start failed: \(lastFailure)" }
            } else if !wantRunning && active {
                _ = try await run("stop", name, loc.host, "desired power state is stopped") {
                    state = try await agents.action(agent, name, "shutdown", query: "?timeoutSeconds=30").state
                }
            }
            status.state = Self.viewState(state)
            status.uuid = loc.status.uuid
            if status != statuses[name] { try await store.setVMStatus(status) }
            statuses[name] = status
        }

        // Domains nobody asked for.
        await checkRogue(observed, known: Set((manifest.vms ?? []).map(\.name)).union(statuses.keys))

        // VMs no longer desired: remove them from their hosts.
        let desiredNames = Set((manifest.vms ?? []).map(\.name))
        for (name, status) in statuses where !desiredNames.contains(name) && !migrating.contains(name) {
            let hosts = Set((observed.vms[name] ?? []).map(\.host) + (status.host.map { [$0] } ?? []))
            var ok = true
            for host in hosts.sorted() {
                guard let agent = hostsByName[host]?.agent, observed.inventories[host] != nil else { ok = false; continue }
                ok = try await run("delete", name, host, "not in the desired state") {
                    try await agents.undefine(agent, name)
                } && ok
            }
            if ok { try await store.deleteVMStatus(name) }
        }
        return actions
    }

    static func viewState(_ libvirtState: String) -> String {
        switch libvirtState {
        case "running", "blocked": return "running"
        case "paused", "pmsuspended": return "paused"
        case "shutoff", "shutdown": return "shutoff"
        case "crashed": return "error"
        default: return libvirtState
        }
    }
}

extension Scheduler {
    /// Hardest first, as `ordered`, for specs.
    static func orderedSpecs(_ specs: [VMSpec]) -> [VMSpec] {
        let byName = Dictionary(uniqueKeysWithValues: specs.map { ($0.name, $0) })
        return ordered(specs.map(ClusterSnapshot.vm)).compactMap { byName[$0.name] }
    }
}

extension Controller {
    /// Deletes history past the cluster's retention settings (finished tasks, events, closed alarms).
    func pruneHistory(_ settings: ClusterManifest.RetentionSettings?, nowMs: Int64) async throws {
        typealias R = ClusterManifest.RetentionSettings
        let day: Int64 = 86_400_000
        let n = try await store.prune(
            tasksBefore: nowMs - Int64(settings?.tasksDays ?? R.defaultTasksDays) * day,
            eventsBefore: nowMs - Int64(settings?.eventsDays ?? R.defaultEventsDays) * day,
            alarmsBefore: nowMs - Int64(settings?.alarmsDays ?? R.defaultAlarmsDays) * day)
        if n.tasks + n.events + n.alarms > 0 {
            logger.info("history pruned", metadata: ["tasks": "\(n.tasks)", "events": "\(n.events)", "alarms": "\(n.alarms)"])
        }
    }

    /// Alarms about undecodable stored objects, cleared once the whole desired state decodes again.
    func clearUndecodableAlarms() async {
        guard let open = try? await store.openAlarmKeys(prefix: "undecodable:"), !open.isEmpty else { return }
        for key in open { _ = try? await store.clearAlarm(key: key, note: "the stored desired state decodes again") }
    }
}

/// Runs reconcile passes every `interval`, and at once when poked (after an apply).
public final class ReconcileLoop: Service, Sendable {
    let controller: Controller
    let interval: Duration
    let poke: AsyncStream<Void>.Continuation
    let pokes: AsyncStream<Void>

    /// How the last pass ended, for /healthz.
    public struct Health: Sendable, Equatable {
        /// When the last pass ended (ms since the epoch); nil before the first one.
        public var lastPassMs: Int64?
        public var lastSuccessMs: Int64?
        public var error: String?
    }
    let health = Mutex(Health())

    public init(controller: Controller, interval: Duration = .seconds(2)) {
        self.controller = controller
        self.interval = interval
        (pokes, poke) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    public var lastHealth: Health { health.withLock { $0 } }

    /// Healthy: the last pass succeeded, and recently (a loop stuck in one pass is not).
    public func isHealthy(nowMs: Int64 = Int64(Date().timeIntervalSince1970 * 1000)) -> Bool {
        let h = lastHealth
        let patience = max(60_000, 10 * (interval.components.seconds * 1000 + interval.components.attoseconds / 1_000_000_000_000_000))
        return h.error == nil && h.lastSuccessMs.map { nowMs - $0 <= patience } == true
    }

    public func trigger() { poke.yield() }

    public func run() async throws {
        let interval = self.interval
        let poke = self.poke
        poke.yield()  // the first pass at once: /healthz answers 200 only after one
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    poke.yield()
                }
            }
            group.addTask { [self] in
                var lastPrune: ContinuousClock.Instant?
                // Whether undecodable-spec alarms may be open (also from before a restart): cleared after
                // the next good pass, not looked for at every one.
                var undecodableAlarms = true
                for await _ in pokes.cancelOnGracefulShutdown() {
                    let started = ContinuousClock.now
                    do {
                        try await controller.reconcile()
                        let now = Int64(Date().timeIntervalSince1970 * 1000)
                        health.withLock { $0 = Health(lastPassMs: now, lastSuccessMs: now, error: nil) }
                        if undecodableAlarms {
                            await controller.clearUndecodableAlarms()
                            undecodableAlarms = false
                        }
                        // History pruned at start and every ten minutes.
                        if lastPrune.map({ ContinuousClock.now - $0 >= .seconds(600) }) ?? true {
                            lastPrune = ContinuousClock.now
                            do {
                                try await controller.pruneHistory(try await controller.desired().settings?.retention, nowMs: now)
                            } catch {
                                controller.logger.warning("pruning history failed", metadata: ["error": "\(error)"])
                            }
                        }
                    } catch {
                        controller.logger.error("reconcile failed", metadata: ["error": "\(error)"])
                        let now = Int64(Date().timeIntervalSince1970 * 1000)
                        health.withLock { $0.lastPassMs = now; $0.error = "\(error)" }
                        if let u = error as? UndecodableSpec {
                            undecodableAlarms = true
                            for o in u.objects {
                                await controller.raise(
                                    "undecodable:\(o.kind)/\(o.name)", kind: "store", name: o.name, host: nil,
                                    message: "\(o.kind) \(o.name) in the store does not decode (\(o.error)); nothing is reconciled until it is fixed or deleted")
                            }
                        }
                    }
                    // A burst of events pokes the loop for every one of them: passes start at most every
                    // 250 ms, so that recording the burst does not wait behind back-to-back passes.
                    try? await Task.sleep(until: started + .milliseconds(250))
                }
            }
            await group.next()
            group.cancelAll()
        }
    }
}
