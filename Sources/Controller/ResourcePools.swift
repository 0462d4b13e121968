import AgentAPI
import ClusterModel
import ControllerAPI
import Foundation
import Synchronization

/// What the children of a task group found, handed back through shared state: they return nothing.
/// A child's result of more than a few words came back as garbage in Swift 6.3.1's release build
/// (the task allocator, swiftlang/swift#81771 and #87481), and an agent that stopped answering crashed
/// the controller in the next dictionary lookup of it.
final class Collected<Item: Sendable>: Sendable {
    private let items = Mutex<[Item]>([])
    func append(_ item: Item) { items.withLock { $0.append(item) } }
    var all: [Item] { items.withLock { $0 } }
}

/// A host's resource pools as last sent to its agent and read back.
struct HostPools: Sendable {
    var settings: [HostPoolSetting]
    var partitions: [PoolPartition]
    var error: String?
    var atMs: Int64
}

extension Controller {
    /// The pool names from the root down to `pool` (nil when it is not a pool of the manifest).
    static func poolPath(_ pool: String, pools: [ClusterManifest.ResourcePool]) -> [String]? {
        let byName = Dictionary(pools.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        guard byName[pool] != nil else { return nil }
        var out = [pool]
        var cur = byName[pool]?.parent
        while let c = cur, byName[c] != nil, !out.contains(c) {
            out.insert(c, at: 0)
            cur = byName[c]?.parent
        }
        return out
    }

    /// Divides every resource pool among the connected hosts (PoolDivvy, over where the VMs run now and
    /// where migrations are taking them) and has each agent apply its share to its cgroup partitions.
    /// Hosts get every pool, so a partition waits wherever a VM of the pool may arrive.
    func enforcePools(_ manifest: ClusterManifest, observed: Observed) async {
        let pools = manifest.resourcePools ?? []
        let agentsByHost = Dictionary(uniqueKeysWithValues: (manifest.hosts ?? []).compactMap { h in h.agent.map { (h.name, $0) } })
        var facts: [String: PoolDivvy.HostFacts] = [:]
        for (name, inv) in observed.inventories where agentsByHost[name] != nil {
            facts[name] = .init(coreMHz: inv.cpu.mhz, cpus: inv.guestCPUs?.count ?? inv.cpu.cpus, memoryMiB: inv.memory.totalMiB)
        }
        guard !facts.isEmpty else { return }
        let specs = Dictionary((manifest.vms ?? []).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var placed: [PoolDivvy.Placed] = []
        for (vm, seen) in observed.vms {
            guard let spec = specs[vm] else { continue }
            for (host, status) in seen where ["running", "blocked", "paused", "pmsuspended"].contains(status.state) {
                placed.append(.init(spec: spec, host: host))
            }
        }
        for m in (try? await store.activeMigrations()) ?? [] where m.state != "queued" {
            if let spec = specs[m.vm], !placed.contains(where: { $0.spec.name == m.vm && $0.host == m.destination }) {
                placed.append(.init(spec: spec, host: m.destination))
            }
        }
        let divvy = PoolDivvy.divvy(pools: pools, vms: placed, hosts: facts)
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let collected = Collected<(String, HostPools)>()
        await withTaskGroup(of: Void.self) { group in
            for host in facts.keys {
                let settings = divvy[host] ?? []
                let url = agentsByHost[host]!
                group.addTask {
                    do {
                        collected.append((host, HostPools(settings: settings, partitions: try await self.agents.applyPools(url, settings), error: nil, atMs: now)))
                    } catch {
                        collected.append((host, HostPools(settings: settings, partitions: [], error: "\(error)", atMs: now)))
                    }
                }
            }
        }
        let results = collected.all
        let previous = poolPartitions.withLock { state in
            let before = state
            for (host, r) in results { state[host] = r }
            for host in state.keys where facts[host] == nil && agentsByHost[host] == nil { state[host] = nil }
            return before
        }
        for (host, r) in results {
            let problems = r.error.map { [$0] } ?? r.partitions.flatMap { p in p.errors.map { "\(p.name): \($0)" } }
            let before = previous[host].map { p in p.error.map { [$0] } ?? p.partitions.flatMap { q in q.errors.map { "\(q.name): \($0)" } } } ?? []
            if !problems.isEmpty && problems != before {
                logger.warning("resource pools not fully applied", metadata: ["host": "\(host)", "problems": "\(problems)"])
                _ = try? await store.addEvent(source: "controller", kind: "host", name: host, event: "resource-pools-not-applied", detail: nil, message: problems.joined(separator: "; "))
            }
        }
    }

    /// Deletes a resource pool from the desired state; refused while VMs or child pools name it.
    /// Hosts remove its partitions once their domains have left.
    public func deleteResourcePool(_ name: String) async throws -> Bool {
        let manifest = try await desired()
        guard (manifest.resourcePools ?? []).contains(where: { $0.name == name }) else { return false }
        let vms = (manifest.vms ?? []).filter { $0.resourcePool == name }.map(\.name)
        let kids = (manifest.resourcePools ?? []).filter { $0.parent == name }.map(\.name)
        if !vms.isEmpty || !kids.isEmpty {
            throw Conflict("resource pool \(name) still holds " + (vms.map { "vm \($0)" } + kids.map { "pool \($0)" }).joined(separator: ", "))
        }
        let deleted = try await store.delete(kind: "resourcePool", name: name)
        if deleted { try await store.addEvent(source: "controller", kind: "resourcePool", name: name, event: "deleted", detail: nil, message: nil) }
        return deleted
    }

    /// Every pool with its effective reservation and each host's share as last applied.
    public func resourcePoolViews() async throws -> [ResourcePoolView] {
        let manifest = try await desired()
        let pools = manifest.resourcePools ?? []
        let tree = ResourcePoolTree(pools: pools, vms: manifest.vms ?? [])
        let state = poolPartitions.withLock { $0 }
        return pools.map { p in
            var hosts: [ResourcePoolView.HostShare] = []
            for (host, hp) in state.sorted(by: { $0.key < $1.key }) {
                guard let s = hp.settings.first(where: { $0.name == p.name }) else { continue }
                hosts.append(.init(host: host, setting: s, applied: hp.partitions.first { $0.name == p.name && $0.setting != nil },
                                   error: hp.error, atMs: hp.atMs))
            }
            let eff = tree.effective[p.name] ?? .init()
            return ResourcePoolView(
                name: p.name, parent: p.parent, cpu: p.cpu, memory: p.memory,
                effectiveReservation: .init(cpuMHz: eff.cpuMHz, memoryMiB: eff.memoryMiB),
                vms: hosts.reduce(0) { $0 + $1.setting.vms }, hosts: hosts)
        }
    }
}
