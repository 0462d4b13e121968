import Crypto
import ClusterModel
@testable import Controller
import ControllerAPI
import AgentAPI
import Foundation
import Logging
import ServerSupport
import Store
import TLSSupport
import SwiftASN1
import Testing
import X509

@Suite struct RoleTests {
    @Test func requiredRoles() {
        #expect(Role.required(method: "GET", path: "/healthz") == nil)
        #expect(Role.required(method: "GET", path: "/v1/ca") == nil)
        #expect(Role.required(method: "POST", path: "/v1/join") == nil)
        #expect(Role.required(method: "GET", path: "/v1/vms") == .viewer)
        #expect(Role.required(method: "POST", path: "/v1/plan") == .viewer)
        #expect(Role.required(method: "POST", path: "/v1/apply") == .operator)
        #expect(Role.required(method: "DELETE", path: "/v1/vms/a") == .operator)
        #expect(Role.required(method: "POST", path: "/v1/vms/a/migrate") == .operator)
        #expect(Role.required(method: "GET", path: "/v1/tokens") == .admin)
        #expect(Role.required(method: "DELETE", path: "/v1/tokens/bob") == .admin)
        #expect(Role.required(method: "GET", path: "/v1/audit") == .admin)
        #expect(Role.required(method: "POST", path: "/v1/hosts/h1/join-token") == .admin)
        #expect(Role.required(method: "POST", path: "/v1/hosts/h1/maintenance") == .operator)
        #expect(Role.viewer < .operator && Role.operator < .admin)
        // The router ignores empty segments; so must the check (the review found `//v1/tokens` passing as an operator's).
        #expect(Role.required(method: "POST", path: "//v1/tokens") == .admin)
        #expect(Role.required(method: "DELETE", path: "/v1//tokens/admin") == .admin)
        #expect(Role.required(method: "POST", path: "/v1/hosts/h1/join-token/") == .admin)
        #expect(Role.required(method: "GET", path: "//v1/audit") == .admin)
        #expect(Role.required(method: "GET", path: "//healthz") == nil)
    }
}

@Suite struct AuditChainTests {
    func chain(_ n: Int, key: SymmetricKey? = nil, keyedFrom: Int64 = 1) -> [AuditRecord] {
        var out: [AuditRecord] = []
        var prev = AuditChain.genesis
        for i in 1...n {
            var r = AuditRecord(id: Int64(i), timeMs: 1_700_000_000_000 + Int64(i), actor: i % 2 == 0 ? "alice" : "bob", role: "operator",
                                method: "DELETE", path: "/v1/vms/v\(i)", status: 200, prev: prev, hash: "")
            r.hash = AuditChain.hash(of: r, key: Int64(i) >= keyedFrom ? key : nil)
            prev = r.hash
            out.append(r)
        }
        return out
    }

    @Test func intactChainVerifies() {
        let v = AuditChain.verify(chain(20))
        #expect(v.ok && v.records == 20 && v.head == chain(20).last!.hash)
        #expect(AuditChain.verify([]).ok)
    }

    /// Changing any field of any record, dropping a record, or swapping two is detected at that record.
    @Test(arguments: 1...20) func everyTamperingIsDetected(at i: Int) {
        var changed = chain(20)
        changed[i - 1].actor = "mallory"
        #expect(AuditChain.verify(changed).brokenAt == Int64(i))
        var status = chain(20)
        status[i - 1].status = 403
        #expect(AuditChain.verify(status).ok == false)
        var dropped = chain(20)
        dropped.remove(at: i - 1)
        if i < 20 { #expect(AuditChain.verify(dropped).ok == false) }
        var rehashed = chain(20)
        rehashed[i - 1].path = "/v1/vms/other"
        rehashed[i - 1].hash = AuditChain.hash(of: rehashed[i - 1])
        // A forger who rehashes the record still breaks the next record's link.
        if i < 20 { #expect(AuditChain.verify(rehashed).brokenAt == Int64(i + 1)) }
    }
}

/// The keyed chain: whoever writes the database but lacks the controller's key cannot re-hash a
/// changed tail into one that verifies; records from before the key verify as plain SHA-256.
@Suite struct KeyedAuditChainTests {
    let key = SymmetricKey(size: .bits256)

    @Test func keyedChainVerifiesOnlyWithItsKey() {
        let records = AuditChainTests().chain(30, key: key, keyedFrom: 11)
        #expect(AuditChain.verify(records, key: key, keyedFrom: 11).ok)
        #expect(AuditChain.verify(records, key: SymmetricKey(size: .bits256), keyedFrom: 11).brokenAt == 11)
        #expect(AuditChain.verify(records).brokenAt == 11, "SHA-256 alone does not verify keyed records")
    }

    /// A database writer changes record 20 and re-hashes it and every record after it with SHA-256,
    /// the way the unkeyed chain allowed: detected at the changed record.
    @Test func aRehashedTailIsDetected() {
        var records = AuditChainTests().chain(30, key: key, keyedFrom: 11)
        records[19].actor = "mallory"
        for i in 19..<records.count {
            if i > 19 { records[i].prev = records[i - 1].hash }
            records[i].hash = AuditChain.hash(of: records[i])
        }
        let v = AuditChain.verify(records, key: key, keyedFrom: 11)
        #expect(!v.ok && v.brokenAt == 20 && v.reason == "record 20 was changed")
    }

    /// Verified page by page, the verdict is the same as all at once, over any number of records.
    @Test func pagedVerificationCoversEveryRecord() {
        let records = AuditChainTests().chain(250, key: key)
        var v = AuditChain.Verifier(key: key)
        for page in stride(from: 0, to: records.count, by: 7) { for r in records[page..<min(page + 7, records.count)] { v.add(r) } }
        #expect(v.verdict == AuditChain.verify(records, key: key) && v.verdict.ok && v.verdict.records == 250)
    }

    @Test func keyFileIsMadeOnceAndPrivate() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("audit-key-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let made = try AuditKey.loadOrCreate(path: dir + "/audit.key", nextID: 42)
        let again = try AuditKey.loadOrCreate(path: dir + "/audit.key", nextID: 99)
        #expect(made.keyedFrom == 42 && again.keyedFrom == 42 && made.key == again.key)
        let mode = try #require(try FileManager.default.attributesOfItem(atPath: dir + "/audit.key")[.posixPermissions] as? Int)
        #expect(mode == 0o600)
        try "not a key\n".write(toFile: dir + "/bad.key", atomically: true, encoding: .utf8)
        #expect(throws: AuditKey.Problem.self) { try AuditKey.loadOrCreate(path: dir + "/bad.key", nextID: 1) }
    }
}

@Suite struct ClusterCATests {
    @Test func issuesIdentitiesThatChainToIt() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vs-ca-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try ClusterCA.loadOrCreate(directory: dir + "/pki")
        let again = try ClusterCA.loadOrCreate(directory: dir + "/pki")
        #expect(again.certificate == ca.certificate, "made once, loaded after")
        let attrs = try FileManager.default.attributesOfItem(atPath: dir + "/pki/ca.key")
        #expect((attrs[.posixPermissions] as? Int ?? 0) == 0o600)
        let id = try ca.write(try ca.issue(commonName: "h1", names: ["10.0.0.1"], role: .host), to: dir + "/h1", prefix: "agent")
        let chain = try String(contentsOfFile: id.certificatePath, encoding: .utf8)
        let leaf = try Certificate(derEncoded: try #require(try PEMDocument.parseMultiple(pemString: chain).first).derBytes)
        #expect(leaf.issuer == ca.certificate.subject)
        #expect(ca.certificate.publicKey.isValidSignature(leaf.signature, for: leaf))
        let san = try #require(try leaf.extensions.subjectAlternativeNames)
        #expect(san.contains(.dnsName("h1")))
        #expect(san.contains(where: { if case .ipAddress = $0 { return true } else { return false } }))
        // A host's own key: the CSR proves possession; the signed certificate carries that key.
        let req = try HostJoin.request(commonName: "h2")
        let key = try HostJoin.verifiedKey(csrPEM: req.csr)
        let signed = try ca.sign(publicKey: key, commonName: "h2", names: [], role: .host)
        #expect(signed.publicKey == key)
        #expect(throws: (any Error).self) { _ = try HostJoin.verifiedKey(csrPEM: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----") }
        #expect(try HostJoin.fingerprint(pem: ca.certificatePEM).count == 64)
    }
}

/// Who may call an agent: only controller and operator identities of the cluster CA, unexpired and
/// unrevoked. A host's certificate (every other agent's, libvirt's) is refused although it verifies.
@Suite struct ClientAuthorizerTests {
    func leaf(_ pem: String) throws -> [Certificate] {
        try PEMDocument.parseMultiple(pemString: pem).map { try Certificate(derEncoded: $0.derBytes) }
    }

    @Test func rolesDecide() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vs-authz-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try ClusterCA.loadOrCreate(directory: dir + "/pki")
        let gate = ClientAuthorizer(roots: [ca.certificate], allowed: [.controller, .operator])
        for role in IdentityRole.allCases {
            let chain = try leaf(try ca.issue(commonName: "x-\(role.rawValue)", names: [], role: role).chain)
            #expect(IdentityRole(of: chain[0]) == role)
            let result = await gate.authorize(chain)
            switch (role, result) {
            case (.controller, .success(let who)), (.operator, .success(let who)): #expect(who.role == role)
            case (.host, .failure(let why)): #expect(why.description.contains("host identity may not call"), "\(why)")
            default: Issue.record("\(role): \(result)")
            }
        }
        // The leaf alone (without the CA certificate the chain file carries) verifies too.
        let op = try leaf(try ca.issue(commonName: "op", names: [], role: .operator).chain)
        if case .failure(let why) = await gate.authorize([op[0]]) { Issue.record("\(why)") }
        // Operators are clients only; controllers and hosts also serve.
        #expect(try op[0].extensions.extendedKeyUsage?.contains(.serverAuth) == false)

        // Another CA's controller identity, an expired one, one without a role, a revoked one: refused.
        let other = try ClusterCA.loadOrCreate(directory: dir + "/other")
        let foreign = try leaf(try other.issue(commonName: "vsphere-controller", names: [], role: .controller).chain)
        if case .success = await gate.authorize(foreign) { Issue.record("another CA's certificate was accepted") }
        let old = try leaf(try ca.issue(commonName: "old", names: [], role: .controller, days: 1, now: Date().addingTimeInterval(-3 * 86400)).chain)
        if case .success = await gate.authorize(old) { Issue.record("an expired certificate was accepted") }
        let selfMade = try leaf(TLSIdentity.selfSigned(names: ["x"]).certificate)
        if case .success = await gate.authorize(selfMade) { Issue.record("a throwaway CA's certificate was accepted") }
        let revoked = ClientAuthorizer(roots: [ca.certificate], allowed: [.controller, .operator], revoked: [ClientAuthorizer.serial(of: op[0])])
        guard case .failure(let why) = await revoked.authorize(op) else { Issue.record("a revoked certificate was accepted"); return }
        #expect(why.description.contains("revoked"))
        if case .success = await gate.authorize([Certificate]()) { Issue.record("no certificate was accepted") }
    }

    @Test func serialNumbersNormalize() {
        #expect(ClientAuthorizer.normalize("serial=00AB:CD") == "abcd")
        #expect(ClientAuthorizer.normalize("  0f ") == "f")
        #expect(ClientAuthorizer.normalize("0") == "0")
        #expect(ClientAuthorizer.normalize("xyz") == "")
        #expect(ClientAuthorizer.normalize("") == "")
        #expect(Hex.encode([0, 1, 0xab, 0xff]) == "0001abff")
    }
}

/// A controller on a fresh SQLite store in a scratch directory (with a cluster CA in it when `withCA`),
/// shut down and removed after `body`.
func withScratchController(
    _ label: String, withCA: Bool = false, controllerNames: [String] = [], _ body: (Controller, Store) async throws -> Void
) async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vs-\(label)-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let ca = withCA ? try ClusterCA.loadOrCreate(directory: dir + "/pki") : nil
    let store = try await Store.open(dir + "/state.db", logger: Logger(label: "test"))
    let agents = try AgentClient(tls: .makeClientConfiguration())
    let controller = Controller(store: store, agents: agents, logger: Logger(label: "test"), ca: ca, controllerNames: controllerNames)
    do {
        try await body(controller, store)
    } catch {
        try? await agents.shutdown()
        try? await store.close()
        throw error
    }
    try await agents.shutdown()
    try await store.close()
}

@Suite struct JoinTests {
    /// A join token fixes its certificate's names when it is made (a later change of the host's agent
    /// URL does not move them), refuses a name of the controller's own certificate, and the certificate
    /// is a host's (it cannot drive agents).
    @Test func namesAreFixedWithTheToken() async throws {
        try await withScratchController("join", withCA: true, controllerNames: ["localhost", "10.0.0.9"]) { controller, _ in
            func apply(_ h2: String) async throws {
                let doc = #"{"apiVersion":"vsphere/v1","kind":"Cluster","metadata":{"name":"t"},"hosts":[{"name":"h1","agent":"https://10.0.0.9:7443"},{"name":"h2","agent":"https://\#(h2):7443"}]}"#
                _ = try await controller.apply(try JSONDecoder().decode(ClusterManifest.self, from: Data(doc.utf8)), prune: false, dryRun: false)
            }
            try await apply("10.0.0.2")
            await #expect(throws: Conflict.self, "h1's address is the controller's") { _ = try await controller.joinToken(host: "h1", ttlSeconds: nil) }
            let token = try await controller.joinToken(host: "h2", ttlSeconds: nil)
            try await apply("10.0.0.3")
            let req = try HostJoin.request(commonName: "h2")
            let answer = try await controller.join(JoinRequest(host: "h2", token: token.token, csr: req.csr))
            let leaf = try Certificate(derEncoded: try #require(try PEMDocument.parseMultiple(pemString: answer.certificate).first).derBytes)
            let san = try #require(try leaf.extensions.subjectAlternativeNames)
            #expect(san.contains(.dnsName("h2")))
            #expect(san.contains(.ipAddress(ASN1OctetString(contentBytes: [10, 0, 0, 2]))), "the address when the token was made")
            #expect(!san.contains(.ipAddress(ASN1OctetString(contentBytes: [10, 0, 0, 3]))))
            #expect(IdentityRole(of: leaf) == .host)
            await #expect(throws: (any Error).self, "once") { _ = try await controller.join(JoinRequest(host: "h2", token: token.token, csr: req.csr)) }
        }
    }
}

@Suite struct RefusalFloodTests {
    /// Unknown tokens are not cached, and refused anonymous calls are recorded within a budget per
    /// minute: a flood of them grows neither the cache nor the audit log without bound.
    @Test func floodsAreBounded() async throws {
        try await withScratchController("flood", withCA: true) { controller, _ in
            for i in 0..<300 { #expect(try await controller.authenticate("guess-\(i)") == nil) }
            #expect(controller.authCache.withLock { $0.count } == 0)
            for i in 0..<200 { await controller.auditAnonymous(method: "POST", path: "/v1/apply?\(i)") }
            let records = try await controller.auditRecords(after: 0)
            #expect(records.count == controller.anonymousAudit.perMinute)
            #expect(try await controller.verifyAudit().ok)
            // Refused joins: as many events as the budget, whatever the flood.
            let events = try await controller.store.events(limit: 10_000).count
            let csr = try HostJoin.request(commonName: "h1").csr
            for i in 0..<200 { _ = try? await controller.join(JoinRequest(host: "h\(i % 5 + 1)", token: "guess-\(i)", csr: csr)) }
            #expect(try await controller.store.events(limit: 10_000).count - events == controller.refusedJoins.perMinute)
        }
    }

    /// A client without credentials gets its burst, then 429 until its bucket refills; another client
    /// is not held back by it.
    @Test func openRoutesAreRateLimited() {
        let limiter = RateLimiter(rate: 10, burst: 20, maxKeys: 3)
        let t0 = ContinuousClock.now
        #expect((0..<20).allSatisfy { _ in limiter.allow("10.0.0.1", now: t0) })
        #expect(!limiter.allow("10.0.0.1", now: t0))
        #expect(limiter.allow("10.0.0.2", now: t0))
        #expect(limiter.allow("10.0.0.1", now: t0 + .milliseconds(150)), "one token back after 100 ms")
        #expect(!limiter.allow("10.0.0.1", now: t0 + .milliseconds(150)))
        // Many addresses: the table stays bounded and an exhausted client is not forgotten by them.
        for i in 0..<50 { #expect(limiter.allow("10.0.1.\(i)", now: t0 + .milliseconds(160))) }
        #expect(limiter.trackedKeys <= 3)
        #expect(!limiter.allow("10.0.0.1", now: t0 + .milliseconds(160)))
    }
}

/// A spec the store holds but cannot decode stops the reconciler and raises an alarm; it never counts
/// as absent (which would undefine the VM).
@Suite struct UndecodableSpecTests {
    @Test func desiredStateRefusesUndecodableObjects() async throws {
        try await withScratchController("undecodable") { controller, _ in
            try await controller.store.put(kind: "vm", name: "web1", spec: #"{"name":"web1","cpus":"two"}"#)
            await #expect(throws: UndecodableSpec.self) { _ = try await controller.desired() }
            do {
                _ = try await controller.reconcile()
                Issue.record("a pass ran over an undecodable spec")
            } catch let e as UndecodableSpec {
                #expect(e.objects.map(\.name) == ["web1"] && e.description.contains("vm web1"))
            }
            await #expect(throws: UndecodableSpec.self, "apply merges nothing into a state it cannot read") {
                _ = try await controller.apply(ClusterManifest(), prune: true, dryRun: false)
            }
            #expect(try await controller.store.object(kind: "vm", name: "web1") != nil, "still there")
        }
    }
}

@Suite struct ApplyBodyTests {
    /// The fuzzer's find: `{"manifest": 5}` trapped in JSONSerialization; now it is bad input.
    @Test func nonObjectManifestIsBadInput() throws {
        for body in [#"{"manifest": 5}"#, #"{"manifest": "x"}"#, #"{"manifest": [1]}"#, #"{"manifest": {}, "prune": 0}"#, #"{"manifest": {}, "extra": true}"#] {
            #expect(throws: ValidationFailure.self, "\(body)") { _ = try ControllerServer.decodeApply(Data(body.utf8)) }
        }
    }
}

@Suite struct EventAlarmTests {
    /// Watchdogs, panics, I/O errors and console connections in the hosts' events become alarms, each
    /// condition once; a migration of the controller's own raises nothing.
    @Test func hostEventsRaiseAlarms() async throws {
        try await withScratchController("alarms") { controller, store in
            func event(_ seq: Int64, _ kind: String, _ event: String? = nil, _ detail: String? = nil, _ info: [String: String] = [:]) -> AgentEvent {
                AgentEvent(seq: seq, timeMs: 0, kind: kind, domain: "vm1", event: event, detail: detail, info: info)
            }
            await controller.alarmFromEvent(event(1, "watchdog", nil, "reset"), host: "h1")
            await controller.alarmFromEvent(event(2, "lifecycle", "crashed", "panicked"), host: "h1")
            await controller.alarmFromEvent(event(3, "ioError", nil, "pause", ["device": "vda"]), host: "h1")
            await controller.alarmFromEvent(event(4, "ioError", nil, "pause", ["device": "vda"]), host: "h1")
            await controller.alarmFromEvent(event(5, "graphics", "connect", "10.0.0.9:5544", ["remote": "10.0.0.9:5544"]), host: "h1")
            await controller.alarmFromEvent(event(6, "lifecycle", "started", "booted"), host: "h1")
            await controller.alarmFromEvent(event(7, "lifecycle", "stopped", "migrated"), host: "h1")
            let id = try await store.addMigration(vm: "vm2", source: "h1", destination: "h2", state: "running") { _ in "{}" }
            #expect(id > 0)
            await controller.alarmFromEvent(AgentEvent(seq: 8, timeMs: 0, kind: "lifecycle", domain: "vm2", event: "stopped", detail: "migrated"), host: "h1")
            let alarms = try await store.alarms()
            #expect(Set(alarms.map(\.kind)) == ["watchdog", "guest-panic", "io-error", "console-connection", "unexpected-migration"])
            #expect(alarms.filter { $0.kind == "io-error" }.count == 1, "one condition, one alarm")
            #expect(alarms.first { $0.kind == "guest-panic" }?.message.contains("panicked") == true)
            #expect(!alarms.contains { $0.name == "vm2" }, "the controller's own migration")
            // A second console connection folds into the open alarm; once acknowledged, that alarm is closed
            // (a one-time event) and the next connection raises a new one. Conditions stay open when acknowledged.
            await controller.alarmFromEvent(event(9, "graphics", "connect", "10.0.0.9:5545", ["remote": "10.0.0.9:5545"]), host: "h1")
            let consoles = try await store.alarms().filter { $0.kind == "console-connection" }
            #expect(consoles.count == 1)
            #expect(try await controller.acknowledgeAlarm(consoles[0].id, by: "alice"))
            #expect(try await store.alarms().first { $0.id == consoles[0].id }?.state == "cleared")
            await controller.alarmFromEvent(event(10, "graphics", "connect", "10.0.0.9:5546", ["remote": "10.0.0.9:5546"]), host: "h1")
            #expect(try await store.alarms().filter { $0.kind == "console-connection" && $0.state == "active" }.count == 1)
            let io = try #require(try await store.alarms().first { $0.kind == "io-error" })
            #expect(try await controller.acknowledgeAlarm(io.id, by: "alice"))
            #expect(try await store.alarms().first { $0.id == io.id }?.state == "acknowledged")
            #expect(try await store.openAlarmKeys(prefix: "io-error:") == ["io-error:h1:vm1:vda"])
        }
    }
}
