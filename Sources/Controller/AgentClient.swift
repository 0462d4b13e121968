import AgentAPI
import AsyncHTTPClient
import ClusterModel
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL

/// The controller's HTTPS client of every agent: mutual TLS, presenting the controller's certificate
/// from the cluster CA and trusting agents whose certificates chain to it.
public final class AgentClient: Sendable {
    let http: HTTPClient

    public init(tls: TLSConfiguration) throws {
        var config = HTTPClient.Configuration(tlsConfiguration: tls)
        config.timeout = .init(connect: .seconds(3), read: .seconds(90))
        // Per agent: the event stream holds one connection for good, and a reconcile pass, the migration
        // loop, DRS and the pool push each call at once; a libvirt call blocked on a domain's job (a
        // migration) holds another for up to 30 s. The default 8 ran out in a full test run.
        config.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 32)
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
    }

    public func shutdown() async throws { try await http.shutdown() }

    public struct Failure: Error, CustomStringConvertible {
        public var status: Int
        public var message: String
        public var description: String { status == 0 ? message : "\(status): \(message)" }
    }

    func call(_ method: HTTPMethod, _ url: String, body: Data? = nil, timeout: TimeAmount = .seconds(30)) async throws -> (Int, Data) {
        var req = HTTPClientRequest(url: url)
        req.method = method
        if let body {
            req.body = .bytes(ByteBuffer(data: body))
            req.headers.add(name: "Content-Type", value: "application/json")
        }
        do {
            let resp = try await http.execute(req, timeout: timeout)
            let bytes = try await resp.body.collect(upTo: 32 << 20)
            return (Int(resp.status.code), Data(buffer: bytes))
        } catch {
            throw Failure(status: 0, message: "\(url): \(error)")
        }
    }

    func decode<T: Decodable>(_ type: T.Type, _ result: (Int, Data)) throws -> T {
        let (status, data) = result
        guard (200..<300).contains(status) else {
            let message = (try? JSONDecoder().decode(ErrorBody.self, from: data))?.error.message ?? String(decoding: data, as: UTF8.self)
            throw Failure(status: status, message: message)
        }
        return try JSONDecoder().decode(T.self, from: data)
    }

    public func inventory(_ agent: String) async throws -> HostInventory {
        try decode(HostInventory.self, try await call(.GET, agent + "/v1/host", timeout: .seconds(5)))
    }

    public func stats(_ agent: String) async throws -> [VMStats] {
        try decode([VMStats].self, try await call(.GET, agent + "/v1/stats", timeout: .seconds(5)))
    }
    public func vms(_ agent: String) async throws -> [VMStatus] {
        try decode([VMStatus].self, try await call(.GET, agent + "/v1/vms", timeout: .seconds(10)))
    }

    public func define(_ agent: String, _ spec: VMSpec) async throws -> VMStatus {
        try decode(VMStatus.self, try await call(.PUT, agent + "/v1/vms/\(spec.name)", body: try JSONEncoder().encode(spec)))
    }

    public func action(_ agent: String, _ name: String, _ action: String, query: String = "") async throws -> ActionResult {
        try decode(ActionResult.self, try await call(.POST, agent + "/v1/vms/\(name)/\(action)\(query)", timeout: .seconds(120)))
    }

    public func undefine(_ agent: String, _ name: String) async throws {
        let result = try await call(.DELETE, agent + "/v1/vms/\(name)?force=true")
        if result.0 == 404 { return }
        _ = try decode([String: String].self, result)
    }

    /// Applies this host's share of every resource pool; returns the partitions read back.
    public func applyPools(_ agent: String, _ pools: [HostPoolSetting]) async throws -> [PoolPartition] {
        try decode([PoolPartition].self, try await call(.PUT, agent + "/v1/resource-pools", body: try JSONEncoder().encode(PoolSettingsRequest(pools: pools)), timeout: .seconds(15)))
    }

    public func applyNetworks(_ agent: String, _ request: NetworksRequest) async throws -> [NetworkStatus] {
        try decode([NetworkStatus].self, try await call(.PUT, agent + "/v1/networks", body: try JSONEncoder().encode(request), timeout: .seconds(60)))
    }

    public func applyStoragePools(_ agent: String, _ request: StoragePoolsRequest) async throws -> [StoragePoolStatus] {
        try decode([StoragePoolStatus].self, try await call(.PUT, agent + "/v1/storage-pools", body: try JSONEncoder().encode(request), timeout: .seconds(60)))
    }

    /// Creates a volume (or finds it there); a clone may copy gigabytes, hence the long timeout.
    public func createVolume(_ agent: String, pool: String, name: String, _ request: VolumeRequest) async throws -> VolumeStatus {
        try decode(VolumeStatus.self, try await call(.PUT, agent + "/v1/storage-pools/\(pool)/volumes/\(name)", body: try JSONEncoder().encode(request), timeout: .seconds(1800)))
    }

    public func volumes(_ agent: String, pool: String) async throws -> [VolumeStatus] {
        try decode([VolumeStatus].self, try await call(.GET, agent + "/v1/storage-pools/\(pool)/volumes", timeout: .seconds(30)))
    }

    public func deleteVolume(_ agent: String, pool: String, name: String) async throws {
        let r = try await call(.DELETE, agent + "/v1/storage-pools/\(pool)/volumes/\(name)", timeout: .seconds(60))
        if r.0 >= 300 { _ = try decode(VolumeStatus.self, r) }
    }

    public func resizeVolume(_ agent: String, pool: String, name: String, sizeGiB: Int) async throws -> VolumeStatus {
        try decode(VolumeStatus.self, try await call(.POST, agent + "/v1/storage-pools/\(pool)/volumes/\(name)/resize", body: try JSONEncoder().encode(VolumeResize(sizeGiB: sizeGiB)), timeout: .seconds(60)))
    }

    public func moveDisk(_ agent: String, _ vm: String, _ request: DiskMoveRequest) async throws -> DiskMoveStatus {
        try decode(DiskMoveStatus.self, try await call(.POST, agent + "/v1/vms/\(vm)/move-disk", body: try JSONEncoder().encode(request), timeout: .seconds(60)))
    }

    public func diskMoves(_ agent: String, _ vm: String) async throws -> [DiskMoveStatus] {
        try decode([DiskMoveStatus].self, try await call(.GET, agent + "/v1/vms/\(vm)/move-disk", timeout: .seconds(10)))
    }

    /// Replaces the agent's list of revoked certificate serial numbers.
    public func setRevoked(_ agent: String, _ list: RevokedCertificates) async throws {
        _ = try decode(RevokedCertificates.self, try await call(.PUT, agent + "/v1/revoked-certificates", body: try JSONEncoder().encode(list), timeout: .seconds(10)))
    }

    // MARK: Migration

    public func vm(_ agent: String, _ name: String) async throws -> VMStatus {
        try decode(VMStatus.self, try await call(.GET, agent + "/v1/vms/\(name)", timeout: .seconds(10)))
    }

    /// The VM's status on that host; nil when the host has no such domain.
    public func vmIfPresent(_ agent: String, _ name: String) async throws -> VMStatus? {
        let result = try await call(.GET, agent + "/v1/vms/\(name)", timeout: .seconds(10))
        if result.0 == 404 { return nil }
        return try decode(VMStatus.self, result)
    }

    public func migrationFacts(_ agent: String, _ name: String) async throws -> MigrationFacts {
        try decode(MigrationFacts.self, try await call(.GET, agent + "/v1/vms/\(name)/migration-facts", timeout: .seconds(30)))
    }

    public func prepareDisks(_ agent: String, _ req: DiskPrepare) async throws -> DiskPrepareResult {
        try decode(DiskPrepareResult.self, try await call(.POST, agent + "/v1/disks/prepare", body: try JSONEncoder().encode(req), timeout: .seconds(120)))
    }

    public func releaseDisks(_ agent: String, _ paths: [String]) async throws {
        _ = try decode([String: [String]].self, try await call(.POST, agent + "/v1/disks/release", body: try JSONEncoder().encode(["paths": paths])))
    }

    /// Starts a migration on the source's agent; an id the agent already has is returned as it stands
    /// (a controller restarted between asking and recording).
    public func startMigration(_ agent: String, _ req: MigrationStart) async throws -> MigrationProgress {
        let result = try await call(.POST, agent + "/v1/migrations", body: try JSONEncoder().encode(req))
        if result.0 == 409, let existing = try? await migration(agent, req.id) { return existing }
        return try decode(MigrationProgress.self, result)
    }

    /// nil when the agent has no such migration (it restarted).
    public func migration(_ agent: String, _ id: String) async throws -> MigrationProgress? {
        let result = try await call(.GET, agent + "/v1/migrations/\(id)", timeout: .seconds(10))
        if result.0 == 404 { return nil }
        return try decode(MigrationProgress.self, result)
    }

    public func cancelMigration(_ agent: String, _ id: String) async throws -> MigrationProgress {
        try decode(MigrationProgress.self, try await call(.POST, agent + "/v1/migrations/\(id)/cancel", timeout: .seconds(30)))
    }

    public func completedJob(_ agent: String, _ name: String) async throws -> CompletedJob {
        try decode(CompletedJob.self, try await call(.GET, agent + "/v1/vms/\(name)/completed-job", timeout: .seconds(10)))
    }
}
