import AgentAPI
import ClusterModel
import ControllerAPI
import Foundation
import Logging
import Placement
import ServerSupport
import Store
import Synchronization
import TLSSupport

/// The cluster brain: keeps desired state from manifests, observes hosts through their agents, and
/// reconciles the two. Every action is recorded as a task before it runs; a VM's host is recorded
/// before it is defined there, so a controller killed at any moment finds, after a restart, either
/// the VM where it recorded it or nothing to undo.
public final class Controller: Sendable {
    public let store: Store
    let agents: AgentClient
    let logger: Logger
    /// Measured demand of every VM and the history of host loads (DRS and DPM).
    public let demand = DemandTracker()
    /// DRS applies and host evacuations under way or finished lately.
    let jobs = JobRegistry()
    /// Prometheus metrics.
    public let metrics = ControllerMetrics()
    /// Stopped VMs whose definition an evacuation is moving to another host right now.
    let movingDefinitions = Mutex<Set<String>>([])
    /// When each host's observed status was last written (milliseconds since 1970).
    let hostStatusWrites = Mutex<[String: Int64]>([:])
    /// What each host's agent last reported of its resource pool partitions.
    let poolPartitions = Mutex<[String: HostPools]>([:])

    /// The cluster CA, which signs joining hosts' keys.
    let ca: ClusterCA?
    /// Recently checked API tokens (digest → holder), for two seconds.
    let authCache = Mutex<[String: (who: (name: String, role: Role)?, at: ContinuousClock.Instant)]>([:])

    /// Refused anonymous calls recorded in the audit log: at most 60 a minute, the rest counted
    /// (a flood of unauthenticated calls must not grow the log without bound, nor go unseen).
    let anonymousAudit = MinuteBudget(perMinute: 60)
    /// Refused joins recorded as events, likewise.
    let refusedJoins = MinuteBudget(perMinute: 60)
    /// What each host last reported of its storage pools.
    let storageState = Mutex<[String: HostStorage]>([:])
    /// The revocation list each agent was last given (host → serials).
    let revocationsPushed = Mutex<[String: (serials: [String], at: ContinuousClock.Instant)]>([:])
    /// VMs with an identity that the last pass found on no host.
    let missingVMs = Mutex<Set<String>>([])
    /// Serializes applies.
    let applies = Serial()
    /// What each host last reported of its networks.
    let networkState = Mutex<[String: HostNetworks]>([:])
    /// The names the controller's own certificate carries: no host's certificate may carry them.
    let controllerNames: [String]
    /// What power drivers may run and read (the controller's own configuration, not a manifest's).
    let power: PowerConfig
    /// The audit chain's key, kept outside the store.
    let auditKey: AuditKey
    /// Calls without credentials (health, CA, join, failed sign-ins), per client address: 20 a second,
    /// bursts of 100 by default (a monitoring system polls /healthz far below that).
    let openRoutes: RateLimiter

    public init(
        store: Store, agents: AgentClient, logger: Logger, ca: ClusterCA? = nil, controllerNames: [String] = [], power: PowerConfig = PowerConfig(),
        auditKey: AuditKey = AuditKey(), openRequestsPerSecond: Double = 20
    ) {
        openRoutes = RateLimiter(rate: openRequestsPerSecond, burst: max(1, openRequestsPerSecond * 5))
        self.power = power
        self.auditKey = auditKey
        self.ca = ca
        self.controllerNames = controllerNames
        self.store = store
        self.agents = agents
        self.logger = logger
    }

    /// How long after a power-off an agent that still answers is taken as shutting down, not as back.
    static let powerOffGraceMs: Int64 = 60_000

    static func clock(_ ms: Int64) -> String {
        let f = ISO8601DateFormatter()
        return f.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
    }

    static let kinds = ["site", "host", "storagePool", "network", "resourcePool", "vm", "settings"]

    static func json<T: Encodable>(_ value: T) -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return String(decoding: (try? e.encode(value)) ?? Data(), as: UTF8.self)
    }

    static func decode<T: Decodable>(_ type: T.Type, _ text: String) -> T? {
        try? JSONDecoder().decode(T.self, from: Data(text.utf8))
    }

    // MARK: Desired state

    /// The whole desired state as one manifest.
    ///
    /// A stored object that no longer decodes (written by a newer or broken version, or edited by hand)
    /// stops everything that reads the desired state: taking it for absent would delete its VM.
    public func desired() async throws -> ClusterManifest {
        var undecodable: [UndecodableSpec.Object] = []
        func decodeOrNote<T: Decodable>(_ kind: String, _ name: String, _ spec: String, _ type: T.Type) -> T? {
            do {
                return try JSONDecoder().decode(T.self, from: Data(spec.utf8))
            } catch {
                undecodable.append(.init(kind: kind, name: name, error: "\(error)"))
                return nil
            }
        }
        func load<T: Decodable>(_ kind: String, _ type: T.Type) async throws -> [T] {
            try await store.objects(kind: kind).compactMap { decodeOrNote(kind, $0.name, $0.spec, T.self) }
        }
        let settings = try await store.object(kind: "settings", name: "cluster").flatMap { decodeOrNote("settings", "cluster", $0.spec, ClusterManifest.Settings.self) }
        let manifest = ClusterManifest(
            metadata: nil, settings: settings,
            sites: try await load("site", ClusterManifest.Site.self), hosts: try await load("host", ClusterManifest.Host.self),
            storagePools: try await load("storagePool", ClusterManifest.StoragePool.self),
            networks: try await load("network", ClusterManifest.Network.self),
            resourcePools: try await load("resourcePool", ClusterManifest.ResourcePool.self),
            vms: try await load("vm", VMSpec.self))
        if !undecodable.isEmpty { throw UndecodableSpec(objects: undecodable) }
        return manifest
    }

    /// Merges a document into the desired state by name (a VM absent from it is deleted only with
    /// `prune`). The merged state must validate as a whole; nothing is written otherwise, nor when
    /// `dryRun`. Returns every change with its reason.
    public func apply(_ doc: ClusterManifest, prune: Bool, dryRun: Bool) async throws -> [Change] {
        // One apply at a time: each merges into the desired state the one before it wrote (MAC
        // addresses allocated by two at once could otherwise meet).
        try await applies.run { try await self.applyNow(doc, prune: prune, dryRun: dryRun) }
    }

    func applyNow(_ doc: ClusterManifest, prune: Bool, dryRun: Bool) async throws -> [Change] {
        let docProblems = doc.validate()
        if !docProblems.isEmpty { throw ValidationFailure(docProblems) }
        var merged = try await desired()
        var changes: [Change] = []
        var writes: [(kind: String, name: String, spec: String?)] = []

        func merge<T: Codable & Equatable>(_ kind: String, _ items: [T]?, _ current: inout [T]?, _ name: (T) -> String) {
            guard let items else { return }
            var list = current ?? []
            for item in items {
                let n = name(item)
                if let i = list.firstIndex(where: { name($0) == n }) {
                    if list[i] != item {
                        list[i] = item
                        changes.append(Change(action: "update", kind: kind, name: n, reason: "spec changed"))
                        writes.append((kind, n, Self.json(item)))
                    }
                } else {
                    list.append(item)
                    changes.append(Change(action: "create", kind: kind, name: n, reason: "new in the manifest"))
                    writes.append((kind, n, Self.json(item)))
                }
            }
            current = list
        }
        merge("site", doc.sites, &merged.sites, \.name)
        merge("host", doc.hosts, &merged.hosts, \.name)
        merge("storagePool", doc.storagePools, &merged.storagePools, \.name)
        merge("network", doc.networks, &merged.networks, \.name)
        merge("resourcePool", doc.resourcePools, &merged.resourcePools, \.name)
        // Every NIC gets a MAC unique in the cluster (kept across re-applies) before it is compared.
        var docVMs = doc.vms
        if docVMs != nil { MACAllocation.assign(&docVMs!, existing: merged.vms ?? []) }
        merge("vm", docVMs, &merged.vms, \.name)
        if let s = doc.settings, s != merged.settings {
            merged.settings = s
            changes.append(Change(action: "update", kind: "settings", name: "cluster", reason: "settings changed"))
            writes.append(("settings", "cluster", Self.json(s)))
        }
        if prune, let docVMs = doc.vms {
            let keep = Set(docVMs.map(\.name))
            for vm in merged.vms ?? [] where !keep.contains(vm.name) {
                changes.append(Change(action: "delete", kind: "vm", name: vm.name, reason: "not in the manifest (--prune)"))
                writes.append(("vm", vm.name, nil))
            }
            merged.vms = merged.vms?.filter { keep.contains($0.name) }
        }
        let problems = merged.validate()
        if !problems.isEmpty { throw ValidationFailure(problems) }

        // What the reconciler will do for new VMs: where the scheduler would put them now.
        let created = Set(changes.filter { $0.kind == "vm" && $0.action == "create" }.map(\.name))
        if !created.isEmpty {
            let preview = try await placementPreview(merged, names: created)
            for (i, c) in changes.enumerated() where c.kind == "vm" && c.action == "create" {
                if let where_ = preview[c.name] { changes[i].reason += "; " + where_ }
            }
        }
        if dryRun { return changes }
        for w in writes {
            if let spec = w.spec {
                try await store.put(kind: w.kind, name: w.name, spec: spec)
            } else {
                try await store.delete(kind: w.kind, name: w.name)
            }
        }
        if !changes.isEmpty {
            try await store.addEvent(source: "controller", kind: "apply", name: doc.metadata?.name, event: "applied", detail: "\(changes.count) changes", message: nil)
        }
        return changes
    }

    func placementPreview(_ manifest: ClusterManifest, names: Set<String>) async throws -> [String: String] {
        let (state, _) = try await snapshot(manifest)
        let scheduler = Scheduler(strategy: ClusterSnapshot.strategy(manifest))
        let pending = (manifest.vms ?? []).filter { names.contains($0.name) }.map(ClusterSnapshot.vm)
        let result = scheduler.place(Scheduler.ordered(pending), on: state)
        var out: [String: String] = [:]
        for p in result.placements { out[p.vm] = "would be placed on \(p.host) (\(scheduler.strategy.rawValue))" }
        // Hosts this document (or an earlier one) registered whose agents have not reported yet: not a
        // reason the VM cannot run, only not yet.
        let reported = Set(try await store.hostStatuses().map(\.name))
        let unreported = (manifest.hosts ?? []).filter { !reported.contains($0.name) }
        let specs = Dictionary(uniqueKeysWithValues: (manifest.vms ?? []).map { ($0.name, $0) })
        for u in result.unplaced {
            // Only hosts the VM may run on at all.
            let p = specs[u.vm]?.placement
            let waiting = unreported.filter { h in
                (p?.hosts.map { $0.contains(h.name) } ?? true) && (p?.site.map { $0 == h.site } ?? true)
            }.map(\.name).sorted()
            out[u.vm] = waiting.isEmpty
                ? "cannot be placed now: \(u.summary)"
                : "will be placed when \(waiting.joined(separator: ", ")) \(waiting.count == 1 ? "connects" : "connect") (registered; its agent has not reported yet)"
        }
        return out
    }

    /// Placement's view of the cluster from the last observed inventories and the recorded VM hosts.
    func snapshot(_ manifest: ClusterManifest) async throws -> (ClusterState, [String: Int]) {
        let over = manifest.settings?.placement?.cpuOvercommit ?? ClusterSnapshot.defaultCPUOvercommit
        let statuses = Dictionary(uniqueKeysWithValues: try await store.hostStatuses().map { ($0.name, $0) })
        var hosts: [PlacementHost] = []
        var index: [String: Int] = [:]
        for h in manifest.hosts ?? [] {
            let s = statuses[h.name]
            let inv = s?.inventory.flatMap { Self.decode(HostInventory.self, $0) }
            let state = PlacementHost.State(rawValue: s?.state ?? "disconnected") ?? .disconnected
            let cpus = inv.map(Self.guestCPUCount) ?? h.capacity?.cpus ?? 0
            let mem = inv.map { $0.memory.totalMiB } ?? h.capacity?.memoryMiB ?? 0
            let mhz = inv?.cpu.mhz ?? h.capacity?.cpuMHz ?? ClusterSnapshot.defaultCoreMHz
            index[h.name] = hosts.count
            hosts.append(PlacementHost(
                name: h.name, site: h.site, state: state, vcpuCapacity: Int(Double(cpus) * over),
                memoryCapacityMiB: mem, cpuMHzCapacity: cpus * mhz))
        }
        var state = ClusterState(hosts: hosts)
        let specs = Dictionary(uniqueKeysWithValues: (manifest.vms ?? []).map { ($0.name, $0) })
        for vm in manifest.vms ?? [] { state.noteConstraints(ClusterSnapshot.vm(vm)) }
        for s in try await store.vmStatuses() {
            guard let host = s.host, let i = index[host], let spec = specs[s.name] else { continue }
            state.commit(ClusterSnapshot.vm(spec), to: i)
        }
        // Networks a host said it cannot build keep VMs that need them away from it.
        for (name, h) in networkState.withLock({ $0 }) {
            guard let i = index[name] else { continue }
            for n in h.networks { if let e = n.error { state.hosts[i].unusableNetworks[n.name] = e } }
        }
        // Storage after the VMs already placed: the hosts' free space already counts their volumes.
        let free = storageFree()
        for (name, i) in index where statuses[name] != nil {
            state.hosts[i].storageFreeGiB = (free[name] ?? [:]).mapValues { Int($0 >> 30) }
        }
        return (state, index)
    }

    // MARK: Views

    public func vmViews() async throws -> [VMView] {
        let statuses = Dictionary(uniqueKeysWithValues: try await store.vmStatuses().map { ($0.name, $0) })
        let migrating = Set(try await store.activeMigrations().filter { $0.state != "queued" }.map(\.vm))
        return try await store.objects(kind: "vm").compactMap { Self.decode(VMSpec.self, $0.spec) }.map { spec in
            let s = statuses[spec.name]
            return VMView(
                name: spec.name, host: s?.host, state: migrating.contains(spec.name) ? "migrating" : s?.state ?? "pending", desiredPower: spec.powerState ?? "running",
                cpus: spec.cpus, memoryMiB: spec.memoryMiB, resourcePool: spec.resourcePool, message: s?.message,
                nics: spec.nics.map { .init(network: $0.network ?? $0.bridge, portGroup: $0.portGroup, mac: $0.mac) })
        }
    }

    public func hostViews() async throws -> [HostView] {
        let statuses = Dictionary(uniqueKeysWithValues: try await store.hostStatuses().map { ($0.name, $0) })
        let vmCounts = Dictionary(grouping: try await store.vmStatuses().compactMap(\.host), by: { $0 }).mapValues(\.count)
        return try await store.objects(kind: "host").compactMap { Self.decode(ClusterManifest.Host.self, $0.spec) }.map { h in
            let s = statuses[h.name]
            let inv = s?.inventory.flatMap { Self.decode(HostInventory.self, $0) }
            let power = s?.power.flatMap { Self.decode(PowerRecord.self, $0) }
            return HostView(
                name: h.name, site: h.site, agent: h.agent, state: s?.state ?? "disconnected",
                cpus: inv.map(Self.guestCPUCount) ?? h.capacity?.cpus, memoryMiB: inv?.memory.totalMiB ?? h.capacity?.memoryMiB,
                vms: vmCounts[h.name] ?? 0, message: s?.message, power: power?.state ?? (s?.state == "poweredOff" ? "off" : "on"),
                parkedCPUs: inv?.parkedCPUs)
        }
    }

    /// Deletes a VM from the desired state (the reconciler removes it from its host).
    public func deleteVM(_ name: String) async throws -> Bool {
        let deleted = try await store.delete(kind: "vm", name: name)
        if deleted {
            try await store.addEvent(source: "controller", kind: "vm", name: name, event: "deleted", detail: nil, message: nil)
            // Its conditions end with it (a VM of the same name applied later starts with none).
            for prefix in ["drift:\(name):", "moved:\(name):"] {
                for key in (try? await store.openAlarmKeys(prefix: prefix)) ?? [] { await clear(key, note: "the VM was deleted") }
            }
            await clear("migrated-away:\(name)", note: "the VM was deleted")
        }
        return deleted
    }

    /// Sets a VM's desired power state (`running`/`stopped`), or asks its host to reboot it.
    public func power(_ name: String, action: String) async throws -> Bool {
        guard let obj = try await store.object(kind: "vm", name: name), Self.decode(VMSpec.self, obj.spec) != nil else { return false }
        switch action {
        case "start", "stop":
            let want = action == "start" ? "running" : "stopped"
            return try await updateVM(name) { $0.powerState = want }
        case "restart":
            guard let host = try await store.vmStatuses().first(where: { $0.name == name })?.host,
                let agent = try await agentURL(host)
            else { throw AgentClient.Failure(status: 409, message: "\(name) is not running on any host") }
            let task = try await store.addTask(action: "restart", kind: "vm", name: name, host: host, reason: "requested")
            do {
                _ = try await agents.action(agent, name, "reboot")
                try await store.finishTask(task, error: nil)
            } catch {
                try await store.finishTask(task, error: "\(error)")
                throw error
            }
            return true
        default: return false
        }
    }

    /// Changes a VM's desired spec in turn with applies (a read-modify-write between an apply's read and
    /// its write would be lost, or would undo its NICs and MACs). False when the VM is not desired.
    func updateVM(_ name: String, _ change: @escaping @Sendable (inout VMSpec) -> Void) async throws -> Bool {
        try await applies.run {
            guard let obj = try await self.store.object(kind: "vm", name: name), var spec = Self.decode(VMSpec.self, obj.spec) else { return false }
            change(&spec)
            try await self.store.put(kind: "vm", name: name, spec: Self.json(spec))
            return true
        }
    }

    func agentURL(_ host: String) async throws -> String? {
        try await store.object(kind: "host", name: host).flatMap { Self.decode(ClusterManifest.Host.self, $0.spec) }?.agent
    }
}

/// Stored desired state that does not decode: nothing is reconciled until an operator fixes or
/// deletes it (an alarm per object says which and why).
public struct UndecodableSpec: Error, CustomStringConvertible {
    public struct Object: Sendable, Equatable {
        public var kind: String
        public var name: String
        public var error: String
    }
    public var objects: [Object]
    public var description: String {
        "the stored desired state does not decode: " + objects.map { "\($0.kind) \($0.name): \($0.error)" }.joined(separator: "; ")
    }
}
