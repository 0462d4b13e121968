import AgentAPI
import AsyncHTTPClient
import ClusterModel
import ControllerAPI
import Foundation
import NIOHTTP1

/// Volume commands for operators: the controller picks the host that serves a pool (the one asked
/// for, the only one that sees the pool, or for a shared pool any answering host of it) and passes
/// the request to its agent, which checks names, sizes and use.
extension Controller {
    /// The host and agent URL that serve `pool` (`host`: the operator's choice).
    func volumeHost(pool: String, host: String?) async throws -> (name: String, agent: String) {
        let manifest = try await desired()
        guard let p = (manifest.storagePools ?? []).first(where: { $0.name == pool }) else { throw ControllerServer.NotFound(what: "storage pool \(pool)") }
        let seeing = (manifest.hosts ?? []).filter { $0.agent != nil && p.isSeen(by: $0.name, site: $0.site) }
        let answering = Set(try await store.hostStatuses().filter { $0.inventory != nil && $0.state == "connected" }.map(\.name))
        if let host {
            guard let h = (manifest.hosts ?? []).first(where: { $0.name == host }) else { throw ValidationFailure([ValidationProblem("host", "unknown host \(host)")]) }
            guard let agent = h.agent, p.isSeen(by: h.name, site: h.site) else { throw Conflict("host \(host) does not see pool \(pool)") }
            return (h.name, agent)
        }
        if seeing.isEmpty { throw Conflict("no host sees pool \(pool)") }
        if p.type == "shared" || p.type == "rbd" || seeing.count == 1 {
            guard let h = seeing.first(where: { answering.contains($0.name) }) ?? seeing.first else { throw Conflict("no host sees pool \(pool)") }
            return (h.name, h.agent!)
        }
        throw ValidationFailure([ValidationProblem("host", "pool \(pool) is on \(seeing.count) hosts (\(seeing.map(\.name).joined(separator: ", "))): say which")])
    }

    /// What a change to a volume must not meet: VMs of the desired state whose disk it is (the agent
    /// sees only its own host's domains, a shared pool's volume may be another host's VM's disk).
    enum VolumeChange { case delete, snapshot }

    func checkVolumeUse(pool: String, volume: String, _ change: VolumeChange) async throws {
        let statuses = Dictionary(uniqueKeysWithValues: try await store.vmStatuses().map { ($0.name, $0) })
        for vm in try await desired().vms ?? [] {
            for (i, d) in vm.disks.enumerated() where d.path == nil && d.pool == pool && Self.volumeName(vm: vm.name, disk: i) == volume {
                switch change {
                case .delete:
                    throw Conflict("\(pool)/\(volume) is disk \(i) of \(vm.name): delete the VM first (its volumes stay until deleted)")
                case .snapshot:
                    let state = statuses[vm.name]?.state ?? "pending"
                    if !["shutoff", "stopped", "pending"].contains(state) {
                        throw Conflict("\(pool)/\(volume) is disk \(i) of \(vm.name), which is \(state)\(statuses[vm.name]?.host.map { " on \($0)" } ?? ""): stop it first")
                    }
                }
            }
        }
    }

    /// Passes one volume request to the agent that serves the pool and decodes its answer.
    func volumeCall<T: Decodable>(_ type: T.Type, _ method: HTTPMethod, pool: String, host: String?, path: String, body: Data? = nil,
                                  volume: String? = nil, change: VolumeChange? = nil) async throws -> T {
        if let volume, let change { try await checkVolumeUse(pool: pool, volume: volume, change) }
        let (_, agent) = try await volumeHost(pool: pool, host: host)
        let encoded = pool.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(.init(charactersIn: "-._"))) ?? pool
        return try agents.decode(T.self, try await agents.call(method, agent + "/v1/storage-pools/\(encoded)/volumes" + path, body: body, timeout: .seconds(3600)))
    }

    static func segment(_ s: String) -> String {
        "/" + (s.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(.init(charactersIn: "-._"))) ?? s)
    }
}
