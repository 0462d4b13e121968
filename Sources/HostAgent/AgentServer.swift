import AgentAPI
import ClusterModel
import FoundationEssentials
import Glibc
import Hummingbird
import HummingbirdTLS
import HTTPTypes
import Logging
import ServerSupport
import NIOCore
import NIOSSL

/// The agent's HTTPS API (Schemas/agent-api.json).
public enum AgentServer {
    public static func router(agent: HostAgent, gate: ClientGate? = nil) -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.get("/healthz") { _, _ in
            Response.json(200, ["status": agent.supervisor.isConnected ? "ok" : "libvirt-disconnected"])
        }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: await agent.metrics.render(agent))))
        }
        router.get("/v1/host") { _, _ in await respond { try await agent.inventory() } }
        router.get("/v1/vms") { _, _ in await respond { try await agent.list() } }
        router.get("/v1/stats") { _, _ in await respond { try await agent.stats(nil) } }
        router.get("/v1/vms/:name") { _, ctx in
            await respond { try await agent.status(try name(ctx)) }
        }
        router.put("/v1/vms/:name") { request, ctx in
            await respondDefined {
                let vmName = try name(ctx)
                let body = try await request.body.collect(upTo: 1 << 20)
                let spec: VMSpec
                do {
                    spec = try VMSpec.decodeValidated(Data(buffer: body))
                } catch let failure as ValidationFailure {
                    throw AgentError.invalid(failure.problems)
                }
                if spec.name != vmName {
                    throw AgentError.invalid([ValidationProblem("name", "must equal the name in the path (\(vmName))")])
                }
                return try await agent.define(spec)
            }
        }
        router.delete("/v1/vms/:name") { request, ctx in
            await respond {
                let force = request.uri.queryParameters.get("force").map { $0 == "true" || $0 == "1" } ?? false
                try await agent.undefine(try name(ctx), force: force)
                return ["deleted": try name(ctx)]
            }
        }
        router.post("/v1/vms/:name/:action") { request, ctx in
            await respond {
                let vmName = try name(ctx)
                let action = ctx.parameters.get("action") ?? ""
                switch action {
                case "start":
                    return try await agent.start(vmName)
                case "shutdown":
                    let raw = request.uri.queryParameters.get("timeoutSeconds")
                    let timeout: Int
                    if let raw {
                        guard let t = Int(raw), t >= 0, t <= 3600 else {
                            throw AgentError.invalid([ValidationProblem("timeoutSeconds", "must be an integer between 0 and 3600")])
                        }
                        timeout = t
                    } else {
                        timeout = agent.config.shutdownTimeoutSeconds
                    }
                    return try await agent.shutdown(vmName, timeout: .seconds(timeout))
                case "destroy", "reboot", "suspend", "resume":
                    return try await agent.simple(vmName, action: action)
                case "settle":
                    let resume = request.uri.queryParameters.get("resume").map { $0 == "true" || $0 == "1" } ?? false
                    return try await agent.settleIncoming(vmName, resume: resume)
                default:
                    throw AgentError.notFound("no action \(action); use start, shutdown, destroy, reboot, suspend, resume or settle")
                }
            }
        }
        router.get("/v1/vms/:name/stats") { _, ctx in
            await respond {
                guard let s = try await agent.stats(try name(ctx)).first else { throw AgentError.notFound("no stats") }
                return s
            }
        }
        router.get("/v1/vms/:name/disks") { _, ctx in await respond { try await agent.disks(try name(ctx)) } }
        router.get("/v1/vms/:name/migration-facts") { _, ctx in await respond { try await agent.migrationFacts(try name(ctx)) } }
        router.get("/v1/vms/:name/completed-job") { _, ctx in await respond { try await agent.completedJob(try name(ctx)) } }
        router.post("/v1/disks/prepare") { request, _ in
            await respond { try await agent.prepareDisks(try await body(DiskPrepare.self, request)) }
        }
        router.post("/v1/disks/release") { request, _ in
            await respond { ["removed": try await agent.releaseDisks(try await body([String: [String]].self, request)["paths"] ?? [])] }
        }
        router.get("/v1/migrations") { _, _ in await respond { agent.migrations.list() } }
        router.post("/v1/migrations") { request, _ in
            await respond { try await agent.migrations.start(try await body(MigrationStart.self, request), on: agent) }
        }
        router.get("/v1/migrations/:id") { _, ctx in
            await respond { try agent.migrations.get(ctx.parameters.get("id") ?? "") }
        }
        router.post("/v1/migrations/:id/cancel") { _, ctx in
            await respond { try await agent.migrations.cancel(ctx.parameters.get("id") ?? "", on: agent) }
        }
        if let gate {
            router.get("/v1/revoked-certificates") { _, _ in await respond { gate.revoked() } }
            router.put("/v1/revoked-certificates") { request, _ in
                await respond { try gate.setRevoked(try await body(RevokedCertificates.self, request)) }
            }
        }
        router.post("/v1/vms/:name/move-disk") { request, ctx in
            await respond { try await agent.moveDisk(try name(ctx), try await body(DiskMoveRequest.self, request)) }
        }
        router.get("/v1/vms/:name/move-disk") { _, ctx in await respond { agent.diskMoves.get(try name(ctx)) } }
        router.get("/v1/networks") { _, _ in await respond { try await agent.networks() } }
        router.put("/v1/networks") { request, _ in
            await respond { try await agent.applyNetworks(try await body(NetworksRequest.self, request)) }
        }
        router.get("/v1/storage-pools") { _, _ in await respond { try await agent.storagePools() } }
        router.put("/v1/storage-pools") { request, _ in
            await respond { try await agent.applyStoragePools(try await body(StoragePoolsRequest.self, request)) }
        }
        router.get("/v1/storage-pools/:pool/volumes") { _, ctx in
            await respond { try await agent.volumes(pool: ctx.parameters.get("pool") ?? "") }
        }
        router.put("/v1/storage-pools/:pool/volumes/:volume") { request, ctx in
            await respond {
                try await agent.createVolume(pool: ctx.parameters.get("pool") ?? "", name: ctx.parameters.get("volume") ?? "", try await body(VolumeRequest.self, request))
            }
        }
        router.post("/v1/storage-pools/:pool/volumes/:volume/resize") { request, ctx in
            await respond {
                try await agent.resizeVolume(pool: ctx.parameters.get("pool") ?? "", name: ctx.parameters.get("volume") ?? "", try await body(VolumeResize.self, request))
            }
        }
        router.get("/v1/storage-pools/:pool/volumes/:volume/snapshots") { _, ctx in
            await respond { try await agent.volumeSnapshots(pool: ctx.parameters.get("pool") ?? "", volume: ctx.parameters.get("volume") ?? "") }
        }
        router.post("/v1/storage-pools/:pool/volumes/:volume/snapshots") { request, ctx in
            await respond {
                let req = try await body(VolumeSnapshotRequest.self, request)
                return try await agent.changeSnapshot(pool: ctx.parameters.get("pool") ?? "", volume: ctx.parameters.get("volume") ?? "", snapshot: req.name, "create")
            }
        }
        router.post("/v1/storage-pools/:pool/volumes/:volume/snapshots/:snapshot/revert") { _, ctx in
            await respond {
                try await agent.changeSnapshot(pool: ctx.parameters.get("pool") ?? "", volume: ctx.parameters.get("volume") ?? "",
                                               snapshot: ctx.parameters.get("snapshot") ?? "", "apply")
            }
        }
        router.delete("/v1/storage-pools/:pool/volumes/:volume/snapshots/:snapshot") { _, ctx in
            await respond {
                try await agent.changeSnapshot(pool: ctx.parameters.get("pool") ?? "", volume: ctx.parameters.get("volume") ?? "",
                                               snapshot: ctx.parameters.get("snapshot") ?? "", "delete")
            }
        }
        router.delete("/v1/storage-pools/:pool/volumes/:volume") { _, ctx in
            await respond {
                try await agent.deleteVolume(pool: ctx.parameters.get("pool") ?? "", name: ctx.parameters.get("volume") ?? "")
                return ["deleted": ctx.parameters.get("volume") ?? ""]
            }
        }
        router.get("/v1/resource-pools") { _, _ in await respond { agent.pools.read() } }
        router.put("/v1/resource-pools") { request, _ in
            await respond { try await agent.applyPools(try await body(PoolSettingsRequest.self, request)) }
        }
        router.get("/v1/vms/:name/tuning") { _, ctx in await respond { try await agent.tuning(try name(ctx)) } }
        router.get("/v1/vms/:name/console") { _, ctx in
            do {
                let text = try await agent.console(try name(ctx))
                return Response(
                    status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
                    body: .init(byteBuffer: ByteBuffer(string: text)))
            } catch {
                return failure(error)
            }
        }
        router.get("/v1/events") { request, _ in
            var since: Int64? = nil
            if let raw = request.uri.queryParameters.get("since") ?? request.headers[.lastEventID] {
                guard let s = Int64(raw), s >= 0 else {
                    return failure(AgentError.invalid([ValidationProblem("since", "must be a non-negative integer")]))
                }
                since = s
            }
            // Every 20 s a comment: a quiet host has no events to write, and a dead stream (its
            // subscription and TLS connection) is only noticed on a write.
            let stream = agent.hub.subscribe(since: since, heartbeat: eventHeartbeat)
            return Response(
                status: .ok,
                headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                body: ResponseBody { writer in
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.sortedKeys]
                    try await writer.write(ByteBuffer(string: ": vsphere-agent events\n\n"))
                    for await item in stream {
                        if let event = item {
                            let data = String(decoding: try encoder.encode(event), as: UTF8.self)
                            try await writer.write(ByteBuffer(string: "id: \(event.seq)\nevent: \(event.kind)\ndata: \(data)\n\n"))
                        } else {
                            try await writer.write(ByteBuffer(string: ": keepalive\n\n"))
                        }
                    }
                    try await writer.finish(nil)
                })
        }
        return router
    }

    static func name(_ ctx: BasicRequestContext) throws -> String {
        let n = ctx.parameters.get("name") ?? ""
        guard Names.isValid(n) else { throw AgentError.invalid([ValidationProblem("name", "must match ^[a-z][a-z0-9-]{0,62}$")]) }
        return n
    }

    /// Decodes a JSON body; a field of the wrong type or a missing one is a 400 naming the field.
    static func body<T: Decodable>(_ type: T.Type, _ request: Request) async throws -> T {
        let buffer = try await request.body.collect(upTo: 1 << 20)
        do {
            return try JSONDecoder().decode(T.self, from: Data(buffer: buffer))
        } catch let DecodingError.keyNotFound(key, ctx) {
            throw AgentError.invalid([ValidationProblem((ctx.codingPath + [key]).map(\.stringValue).joined(separator: "."), "is required")])
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw AgentError.invalid([ValidationProblem(ctx.codingPath.map(\.stringValue).joined(separator: "."), "has the wrong type")])
        } catch let DecodingError.valueNotFound(_, ctx) {
            throw AgentError.invalid([ValidationProblem(ctx.codingPath.map(\.stringValue).joined(separator: "."), "must not be null")])
        } catch {
            throw AgentError.invalid([ValidationProblem("", "body must be a JSON object")])
        }
    }

    static func respond<T: Encodable>(_ body: () async throws -> T) async -> Response {
        do {
            return Response.json(200, try await body())
        } catch {
            return failure(error)
        }
    }

    /// 201 when the VM was created, 200 when an existing definition was updated.
    static func respondDefined(_ body: () async throws -> (VMStatus, created: Bool)) async -> Response {
        do {
            let (status, wasCreated) = try await body()
            return Response.json(wasCreated ? 201 : 200, status)
        } catch {
            return failure(error)
        }
    }

    static func failure(_ error: any Error) -> Response {
        let e: AgentError
        switch error {
        case let a as AgentError: e = a
        case let h as HTTPError where h.status == .contentTooLarge:
            e = .invalid([ValidationProblem("", "request body too large")])
        default: e = .internalError("\(error)")
        }
        return Response.json(e.status, e.body)
    }

    /// The HTTPS application; run it with the supervisor in one ServiceGroup.
    /// Clients are checked in the handshake by `gate` (role and revocation), not by BoringSSL's chain
    /// verification alone.
    public static func application(
        agent: HostAgent, tls: TLSConfiguration, gate: ClientGate, logger: Logger, onRunning: @escaping @Sendable () async -> Void = {}
    ) throws -> some ApplicationProtocol {
        Application(
            router: router(agent: agent, gate: gate),
            server: try .tls(.http1(), configuration: .init(tlsConfiguration: tls, customAsyncVerificationCallback: { chain in await gate.verify(chain) })),
            configuration: .init(address: .hostname(agent.config.listen, port: agent.config.port), serverName: "vsphere-agent"),
            onServerRunning: { _ in await onRunning() },
            logger: logger)
    }
}

/// How often a quiet event stream carries a comment (`GET /v1/events`).
let eventHeartbeat: Duration = .seconds(20)

extension HTTPField.Name {
    static let lastEventID = HTTPField.Name("Last-Event-ID")!
}
