import AgentAPI
import ClusterModel
import ControllerAPI
import Foundation
import TLSSupport
import HTTPTypes
import Hummingbird
import HummingbirdTLS
import Logging
import ServerSupport
import NIOCore
import NIOSSL

/// The controller's HTTPS API (Schemas/controller-api.json).
public enum ControllerServer {
    public static func router(controller: Controller, loop: ReconcileLoop, migrations: MigrationLoop) -> Router<ControllerContext> {
        let router = Router(context: ControllerContext.self)
        router.add(middleware: AuthMiddleware(controller: controller))
        // 200 only while the reconcile loop's last pass succeeded (and recently): a controller whose store
        // is gone or whose desired state does not decode is not healthy, whatever its HTTP server does.
        router.get("/healthz") { _, _ in
            let h = loop.lastHealth
            var body: [String: String] = ["role": "leader"]
            if let ms = h.lastSuccessMs { body["lastSuccessMs"] = String(ms) }
            if loop.isHealthy() {
                body["status"] = "ok"
                return Response.json(200, body)
            }
            body["status"] = h.lastPassMs == nil ? "starting" : "failing"
            if let e = h.error { body["error"] = e }
            return Response.json(503, body)
        }
        router.post("/v1/apply") { request, _ in
            await respond {
                let body = try await request.body.collect(upTo: 16 << 20)
                let req = try decodeApply(Data(buffer: body))
                let changes = try await controller.apply(req.manifest, prune: req.prune, dryRun: req.dryRun)
                if !req.dryRun && !changes.isEmpty { loop.trigger() }
                return ApplyResponse(changes: changes)
            }
        }
        // What apply would do; a read, open to viewers.
        router.post("/v1/plan") { request, _ in
            await respond {
                let body = try await request.body.collect(upTo: 16 << 20)
                let req = try decodeApply(Data(buffer: body))
                return ApplyResponse(changes: try await controller.apply(req.manifest, prune: req.prune, dryRun: true))
            }
        }
        router.get("/v1/tokens") { _, _ in await respond { try await controller.tokenViews() } }
        router.post("/v1/tokens") { request, _ in
            await respond {
                let body = try await request.body.collect(upTo: 1 << 16)
                return try await controller.createToken(try decodeBody(TokenRequest.self, Data(buffer: body)))
            }
        }
        router.delete("/v1/tokens/:name") { _, ctx in
            await respond {
                let name = ctx.parameters.get("name") ?? ""
                guard try await controller.revokeTokens(name: name) > 0 else { throw NotFound(what: "live token of \(name)") }
                return ["revoked": name]
            }
        }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: await controller.metrics.render(controller))))
        }
        router.get("/v1/alarms") { _, _ in await respond { try await controller.alarmViews() } }
        router.post("/v1/alarms/:id/ack") { request, ctx in
            await respond {
                guard let id = ctx.parameters.get("id").flatMap({ Int64($0) }) else { throw ValidationFailure([ValidationProblem("id", "must be an alarm number")]) }
                let who = ctx.actor ?? "?"
                guard try await controller.acknowledgeAlarm(id, by: who) else { throw NotFound(what: "active alarm \(id)") }
                return ["acknowledged": id]
            }
        }
        router.get("/v1/compliance") { _, _ in await respond { try await controller.complianceReport() } }
        // The whole log checked by the only one who holds its key (admin, like the log).
        router.get("/v1/audit/verify") { _, _ in await respond { try await controller.verifyAudit() } }
        router.get("/v1/audit") { request, _ in
            await respond {
                try await controller.auditRecords(after: request.uri.queryParameters.get("after").flatMap { Int64($0) } ?? 0)
            }
        }
        router.get("/v1/vms") { _, _ in await respond { try await controller.vmViews() } }
        router.get("/v1/vms/:name") { _, ctx in
            await respond {
                let name = ctx.parameters.get("name") ?? ""
                guard let vm = try await controller.vmViews().first(where: { $0.name == name }) else { throw NotFound(what: "vm \(name)") }
                return vm
            }
        }
        router.delete("/v1/vms/:name") { _, ctx in
            await respond {
                let name = ctx.parameters.get("name") ?? ""
                guard try await controller.deleteVM(name) else { throw NotFound(what: "vm \(name)") }
                loop.trigger()
                return ApplyResponse(changes: [Change(action: "delete", kind: "vm", name: name, reason: "requested")])
            }
        }
        router.get("/v1/ca") { _, _ in
            await respond {
                guard let ca = controller.ca else { throw NotFound(what: "cluster CA") }
                return ClusterCAView(certificate: ca.certificatePEM, fingerprint: try HostJoin.fingerprint(pem: ca.certificatePEM))
            }
        }
        router.post("/v1/hosts/:name/join-token") { request, ctx in
            await respond {
                let body = try await request.body.collect(upTo: 1 << 16)
                let req = body.readableBytes == 0 ? JoinTokenRequest() : try decodeBody(JoinTokenRequest.self, Data(buffer: body))
                return try await controller.joinToken(host: ctx.parameters.get("name") ?? "", ttlSeconds: req.ttlSeconds)
            }
        }
        router.post("/v1/join") { request, _ in
            await respond {
                let body = try await request.body.collect(upTo: 1 << 16)
                return try await controller.join(try decodeBody(JoinRequest.self, Data(buffer: body)))
            }
        }
        router.delete("/v1/resource-pools/:name") { _, ctx in
            await respond {
                let name = ctx.parameters.get("name") ?? ""
                guard try await controller.deleteResourcePool(name) else { throw NotFound(what: "resource pool \(name)") }
                loop.trigger()
                return ApplyResponse(changes: [Change(action: "delete", kind: "resourcePool", name: name, reason: "requested")])
            }
        }
        router.post("/v1/vms/:name/move-storage") { request, ctx in
            await respond {
                let body = try await request.body.collect(upTo: 1 << 20)
                let req: MoveStorageRequest
                do {
                    req = try JSONDecoder().decode(MoveStorageRequest.self, from: Data(buffer: body))
                } catch {
                    throw ValidationFailure([ValidationProblem("pool", "body must be {\"disk\": N, \"pool\": POOL, \"bandwidthMiBps\"?}")])
                }
                return try await controller.moveStorage(vm: ctx.parameters.get("name") ?? "", req)
            }
        }
        router.get("/v1/vms/:name/move-storage") { _, ctx in
            await respond { try await controller.storageMoves(vm: ctx.parameters.get("name") ?? "") }
        }
        router.post("/v1/vms/:name/migrate") { request, ctx in
            await respond {
                let name = ctx.parameters.get("name") ?? ""
                let body = try await request.body.collect(upTo: 1 << 20)
                let req: MigrateRequest
                do {
                    req = try JSONDecoder().decode(MigrateRequest.self, from: Data(buffer: body))
                } catch {
                    throw ValidationFailure([ValidationProblem("to", "body must be {\"to\": HOST, \"policy\"?, \"bandwidthMiBps\"?, \"budgetSeconds\"?}")])
                }
                let view = try await controller.requestMigration(vm: name, req)
                migrations.trigger()
                return view
            }
        }
        router.get("/v1/migrations") { _, _ in await respond { try await controller.migrationViews() } }
        router.get("/v1/migrations/:name") { _, ctx in
            await respond {
                let name = ctx.parameters.get("name") ?? ""
                guard let m = try await controller.migrationView(name) else { throw NotFound(what: "migration \(name)") }
                return m
            }
        }
        router.post("/v1/migrations/:name/cancel") { _, ctx in
            await respond {
                let name = ctx.parameters.get("name") ?? ""
                guard let m = try await controller.cancelMigration(name) else { throw NotFound(what: "migration \(name)") }
                migrations.trigger()
                return m
            }
        }
        router.post("/v1/vms/:name/:action") { _, ctx in
            await respond {
                let name = ctx.parameters.get("name") ?? ""
                let action = ctx.parameters.get("action") ?? ""
                guard ["start", "stop", "restart"].contains(action) else {
                    throw ValidationFailure([ValidationProblem("action", "must be start, stop, restart or migrate")])
                }
                guard try await controller.power(name, action: action) else { throw NotFound(what: "vm \(name)") }
                loop.trigger()
                return ApplyResponse(changes: [Change(action: action, kind: "vm", name: name, reason: "requested")])
            }
        }
        router.get("/v1/hosts") { _, _ in await respond { try await controller.hostViews() } }
        router.get("/v1/hosts/:name") { _, ctx in
            await respond {
                let name = ctx.parameters.get("name") ?? ""
                guard let h = try await controller.hostViews().first(where: { $0.name == name }) else { throw NotFound(what: "host \(name)") }
                return h
            }
        }
        router.post("/v1/hosts/:name/maintenance") { request, ctx in
            await respond {
                let name = ctx.parameters.get("name") ?? ""
                let body = try await request.body.collect(upTo: 1 << 16)
                guard let req = try? JSONDecoder().decode(MaintenanceRequest.self, from: Data(buffer: body)) else {
                    throw ValidationFailure([ValidationProblem("enabled", "body must be {\"enabled\": true|false}")])
                }
                let job = try await controller.setMaintenance(name, enabled: req.enabled)
                migrations.trigger()
                loop.trigger()
                guard let h = try await controller.hostViews().first(where: { $0.name == name }) else { throw NotFound(what: "host \(name)") }
                return MaintenanceResponse(host: h, job: job)
            }
        }
        router.get("/v1/drs/plan") { _, _ in await respond { try await controller.drsPlan() } }
        router.post("/v1/drs/apply") { _, _ in
            await respond {
                let job = try await controller.startDRSApply(by: "operator")
                migrations.trigger()
                return job
            }
        }
        router.get("/v1/jobs") { _, _ in await respond { controller.jobViews() } }
        router.get("/v1/jobs/:id") { _, ctx in
            await respond {
                let id = ctx.parameters.get("id").flatMap { Int($0) } ?? 0
                guard let j = controller.jobView(id) else { throw NotFound(what: "job \(id)") }
                return j
            }
        }
        router.get("/v1/dpm") { _, _ in await respond { try await controller.dpmStatus() } }
        router.get("/v1/pools") { _, _ in await respond { try await controller.storagePoolViews() } }
        router.get("/v1/networks") { _, _ in await respond { try await controller.networkViews() } }
        // Volumes, through the agent that serves the pool (`?host=` picks one).
        @Sendable func volumeBody<T: Codable>(_ type: T.Type, _ request: Request, _ shape: String) async throws -> Data {
            let body = try await request.body.collect(upTo: 1 << 16)
            do {
                return try JSONEncoder().encode(try JSONDecoder().decode(T.self, from: Data(buffer: body)))
            } catch {
                throw ValidationFailure([ValidationProblem("body", "must be \(shape)")])
            }
        }
        @Sendable func pool(_ ctx: some RequestContext) -> String { ctx.parameters.get("pool") ?? "" }
        @Sendable func vol(_ ctx: some RequestContext) -> String { Controller.segment(ctx.parameters.get("volume") ?? "") }
        @Sendable func host(_ request: Request) -> String? { request.uri.queryParameters.get("host") }
        router.get("/v1/storage-pools/:pool/volumes") { request, ctx in
            await respond { try await controller.volumeCall([VolumeStatus].self, .GET, pool: pool(ctx), host: host(request), path: "") }
        }
        router.put("/v1/storage-pools/:pool/volumes/:volume") { request, ctx in
            await respond {
                let body = try await volumeBody(VolumeRequest.self, request, #"{"sizeGiB"?, "format"?, "from"?, "clone"?}"#)
                return try await controller.volumeCall(VolumeStatus.self, .PUT, pool: pool(ctx), host: host(request), path: vol(ctx), body: body)
            }
        }
        router.post("/v1/storage-pools/:pool/volumes/:volume/resize") { request, ctx in
            await respond {
                let body = try await volumeBody(VolumeResize.self, request, #"{"sizeGiB": N}"#)
                return try await controller.volumeCall(VolumeStatus.self, .POST, pool: pool(ctx), host: host(request), path: vol(ctx) + "/resize", body: body)
            }
        }
        router.delete("/v1/storage-pools/:pool/volumes/:volume") { request, ctx in
            await respond {
                try await controller.volumeCall([String: String].self, .DELETE, pool: pool(ctx), host: host(request), path: vol(ctx),
                                                volume: ctx.parameters.get("volume"), change: .delete)
            }
        }
        router.get("/v1/storage-pools/:pool/volumes/:volume/snapshots") { request, ctx in
            await respond { try await controller.volumeCall([VolumeSnapshot].self, .GET, pool: pool(ctx), host: host(request), path: vol(ctx) + "/snapshots") }
        }
        router.post("/v1/storage-pools/:pool/volumes/:volume/snapshots") { request, ctx in
            await respond {
                let body = try await volumeBody(VolumeSnapshotRequest.self, request, #"{"name": SNAPSHOT}"#)
                return try await controller.volumeCall([VolumeSnapshot].self, .POST, pool: pool(ctx), host: host(request), path: vol(ctx) + "/snapshots", body: body,
                                                       volume: ctx.parameters.get("volume"), change: .snapshot)
            }
        }
        router.post("/v1/storage-pools/:pool/volumes/:volume/snapshots/:snapshot/revert") { request, ctx in
            await respond {
                try await controller.volumeCall([VolumeSnapshot].self, .POST, pool: pool(ctx), host: host(request),
                                                path: vol(ctx) + "/snapshots" + Controller.segment(ctx.parameters.get("snapshot") ?? "") + "/revert",
                                                volume: ctx.parameters.get("volume"), change: .snapshot)
            }
        }
        router.delete("/v1/storage-pools/:pool/volumes/:volume/snapshots/:snapshot") { request, ctx in
            await respond {
                try await controller.volumeCall([VolumeSnapshot].self, .DELETE, pool: pool(ctx), host: host(request),
                                                path: vol(ctx) + "/snapshots" + Controller.segment(ctx.parameters.get("snapshot") ?? ""),
                                                volume: ctx.parameters.get("volume"), change: .snapshot)
            }
        }
        router.get("/v1/resource-pools") { _, _ in await respond { try await controller.resourcePoolViews() } }
        router.get("/v1/tasks") { _, _ in
            await respond {
                try await controller.store.tasks().map {
                    TaskView(id: $0.id, action: $0.action, kind: $0.kind, name: $0.name, host: $0.host, state: $0.state,
                             reason: $0.reason, error: $0.error, createdMs: $0.createdMs)
                }
            }
        }
        router.get("/v1/events") { request, _ in
            await respond {
                // With `after`: what came since (following); without: the newest 500.
                let after = request.uri.queryParameters.get("after").flatMap { Int64($0) }
                let events = if let after { try await controller.store.events(after: after) } else { try await controller.store.latestEvents() }
                return events.map {
                    EventView(id: $0.id, timeMs: $0.timeMs, source: $0.source, kind: $0.kind, name: $0.name, event: $0.event,
                              detail: $0.detail, message: $0.message, hostTimeMs: $0.hostMs)
                }
            }
        }
        return router
    }

    static func decodeApply(_ data: Data) throws -> ApplyRequest {
        // The manifest inside is checked field by field, with paths under `manifest`.
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any], obj["manifest"] != nil else {
            throw ValidationFailure([ValidationProblem("", "body must be {\"manifest\": {...}, \"prune\": bool, \"dryRun\": bool}")])
        }
        // JSONSerialization traps on anything but an object or array at the top: check first.
        guard let m = obj["manifest"] as? [String: Any] else { throw ValidationFailure([ValidationProblem("manifest", "must be an object")]) }
        var problems: [ValidationProblem] = []
        struct Flags: Decodable { var prune: Bool?; var dryRun: Bool? }
        do { _ = try JSONDecoder().decode(Flags.self, from: data) } catch let DecodingError.typeMismatch(_, ctx) {
            problems.append(ValidationProblem(ctx.codingPath.map(\.stringValue).joined(separator: "."), "must be true or false"))
        }
        for key in obj.keys where !["manifest", "prune", "dryRun"].contains(key) { problems.append(ValidationProblem(key, "unknown field")) }
        if !problems.isEmpty { throw ValidationFailure(problems) }
        let manifestData = try JSONSerialization.data(withJSONObject: m)
        let manifest = try ClusterManifest.decodeValidated(manifestData)
        return ApplyRequest(manifest: manifest, prune: obj["prune"] as? Bool ?? false, dryRun: obj["dryRun"] as? Bool ?? false)
    }

    struct NotFound: Error { var what: String }

    /// A JSON body; a missing or mistyped field is a 400 naming it.
    static func decodeBody<T: Decodable>(_ type: T.Type, _ data: Data) throws -> T {
        do {
            return try JSONDecoder().decode(T.self, from: data)
        } catch let DecodingError.keyNotFound(key, ctx) {
            throw ValidationFailure([ValidationProblem((ctx.codingPath + [key]).map(\.stringValue).joined(separator: "."), "is required")])
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw ValidationFailure([ValidationProblem(ctx.codingPath.map(\.stringValue).joined(separator: "."), "has the wrong type")])
        } catch {
            throw ValidationFailure([ValidationProblem("", "body must be a JSON object")])
        }
    }

    static func respond<T: Encodable>(_ body: () async throws -> T) async -> Response {
        do {
            return Response.json(200, try await body())
        } catch let f as ValidationFailure {
            return Response.json(400, APIError(error: f.description, problems: f.problems))
        } catch let n as NotFound {
            return Response.json(404, APIError(error: "no \(n.what)"))
        } catch let u as Unauthorized {
            return Response.json(401, APIError(error: u.description))
        } catch let c as Conflict {
            return Response.json(409, APIError(error: c.description, problems: c.problems))
        } catch let a as AgentClient.Failure {
            return Response.json(a.status >= 400 && a.status < 500 ? a.status : 502, APIError(error: a.description))
        } catch {
            return Response.json(500, APIError(error: "\(error)"))
        }
    }

    public static func application(
        controller: Controller, loop: ReconcileLoop, migrations: MigrationLoop, listen: String, port: Int, tls: TLSConfiguration,
        logger: Logger, onRunning: @escaping @Sendable () async -> Void = {}
    ) throws -> some ApplicationProtocol {
        Application(
            router: router(controller: controller, loop: loop, migrations: migrations),
            server: try .tls(.http1(), tlsConfiguration: tls),
            configuration: .init(address: .hostname(listen, port: port), serverName: "vsphere-controller"),
            onServerRunning: { _ in await onRunning() },
            logger: logger)
    }
}
