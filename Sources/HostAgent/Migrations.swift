import AgentAPI
import ClusterModel
import DomainXML
import FoundationEssentials
import Glibc
import NIOConcurrencyHelpers
import Libvirt
import Logging
import MigrationPolicy

/// Outgoing live migrations of this host: each runs libvirt's peer-to-peer migration on a pool thread
/// while a monitor reads the job's statistics twice a second, feeds the convergence engine and carries
/// out its decisions. Records stay in memory for the controller to read (and after an agent restart the
/// controller finds the VM where libvirt left it).
public final class MigrationRunner: @unchecked Sendable {
    private let lock = NIOLock()
    private var records: [String: MigrationProgress] = [:]
    private var cancelRequests: Set<String> = []
    static let pollInterval: Duration = .milliseconds(500)

    init() {}

    public func list() -> [MigrationProgress] {
        lock.withLock { records.values.sorted { $0.startedMs < $1.startedMs } }
    }

    public func get(_ id: String) throws(AgentError) -> MigrationProgress {
        guard let r = lock.withLock({ records[id] }) else { throw AgentError.notFound("no migration \(id)") }
        return r
    }

    func update(_ id: String, _ body: (inout MigrationProgress) -> Void) {
        lock.withLock {
            if var r = records[id] {
                body(&r)
                records[id] = r
            }
        }
    }

    public func start(_ req: MigrationStart, on agent: HostAgent) async throws(AgentError) -> MigrationProgress {
        var problems: [ValidationProblem] = []
        if !Names.isValid(req.vm) { problems.append(.init("vm", "must match ^[a-z][a-z0-9-]{0,62}$")) }
        if req.id.isEmpty || req.id.count > 64 || !req.id.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }) {
            problems.append(.init("id", "must be 1 to 64 letters, digits or dashes"))
        }
        if !Self.isDestinationURI(req.destinationURI) {
            problems.append(.init("destinationURI", "must be qemu+tls://HOST/system or qemu+tcp://HOST/system (no user, port path or query)"))
        }
        if let bw = req.bandwidthMiBps, bw < 1 || bw > 100_000 { problems.append(.init("bandwidthMiBps", "must be between 1 and 100000")) }
        for d in req.copyDisks where !(d.hasPrefix("vd") || d.hasPrefix("sd")) || d.count > 8 {
            problems.append(.init("copyDisks", "\(d) is not a disk target (vda, vdb, ...)"))
        }
        problems += req.policy.problems().map { ValidationProblem($0.0, $0.1) }
        if !problems.isEmpty { throw AgentError.invalid(problems) }

        let vm = req.vm
        let state = try await agent.withLibvirt { c in try c.domain(named: vm).state().0 }
        guard state == .running || state == .paused else { throw AgentError.conflict("\(vm) is \(state.rawValue); only a running VM migrates live") }
        let progress = MigrationProgress(
            id: req.id, vm: req.vm, destinationURI: req.destinationURI, startedMs: Int64(Date().timeIntervalSince1970 * 1000))
        let refusal: AgentError? = lock.withLock {
            if let existing = records[req.id] { return AgentError.conflict("migration \(req.id) exists (\(existing.phase))") }
            if let busy = records.values.first(where: { $0.vm == req.vm && !$0.isFinished }) {
                return AgentError.conflict("\(req.vm) is already migrating (\(busy.id))")
            }
            if records.values.filter({ !$0.isFinished }).count >= Self.maxConcurrent {
                return AgentError.conflict("this host already runs \(Self.maxConcurrent) outgoing migrations")
            }
            records[req.id] = progress
            return nil
        }
        if let refusal { throw refusal }
        _ = agent.hub.publish(kind: "migration", domain: vm, event: "started", detail: req.destinationURI, info: ["id": req.id, "policy": req.policy.name])
        Task.detached { await self.run(req, agent) }
        return progress
    }

    /// Only `qemu+tls://HOST/system` or `qemu+tcp://HOST/system` with a plain host name or address:
    /// libvirt URIs can carry parameters (`?command=`, `?socket=`) that must never come from a request.
    static func isDestinationURI(_ uri: String) -> Bool {
        for scheme in ["qemu+tls://", "qemu+tcp://"] where uri.hasPrefix(scheme) && uri.hasSuffix("/system") {
            let host = uri.dropFirst(scheme.count).dropLast("/system".count)
            let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]")
            return !host.isEmpty && host.count <= 253 && host.allSatisfy { allowed.contains($0) }
        }
        return false
    }

    /// At most this many outgoing migrations at once: each holds a libvirt pool thread for its whole
    /// length, and the pool must stay free for job statistics, aborts and inventory.
    static let maxConcurrent = 4

    /// Outgoing migrations this agent does not follow (it restarted while libvirtd went on migrating)
    /// are aborted: nobody would enforce their policy or budget, and a precopy abort leaves the guest
    /// running here. One already in post-copy cannot go back and is left to finish.
    func abortOrphans(_ conn: Connection, hub: EventHub, logger: Logger) async {
        let followed = lock.withLock { Set(records.values.filter { !$0.isFinished }.map(\.vm)) }
        let outcome: [(String, String)] = (try? await conn.run { c in
            var out: [(String, String)] = []
            for d in try c.domains() where !followed.contains(d.name) {
                guard let (type, stats) = try? d.jobStats(), type == .bounded || type == .unbounded,
                    stats["operation"]?.intValue == JobOperation.migrationOut
                else { continue }
                if (try? d.isInPostCopy()) == true {
                    out.append((d.name, "in post-copy: left to finish"))
                } else {
                    do {
                        try d.abortJob()
                        out.append((d.name, "aborted"))
                    } catch {
                        out.append((d.name, "abort failed: \(error)"))
                    }
                }
            }
            return out
        }) ?? []
        for (vm, what) in outcome {
            logger.warning("outgoing migration nobody follows", metadata: ["vm": "\(vm)", "outcome": "\(what)"])
            _ = hub.publish(kind: "migration", domain: vm, event: "orphan", detail: what)
        }
    }

    public func cancel(_ id: String, on agent: HostAgent) async throws(AgentError) -> MigrationProgress {
        let r = try get(id)
        if r.isFinished { return r }
        if r.phase == "post-copy" {
            throw AgentError.conflict("\(r.vm) is in post-copy: the guest already runs on the destination; it cannot go back")
        }
        _ = lock.withLock { cancelRequests.insert(id) }
        let vm = r.vm
        do {
            try await agent.withLibvirt { c in try c.domain(named: vm).abortJob() }
        } catch {
            // The job may have just ended; the record says how.
            agent.logger.info("abort of migration \(id) failed", metadata: ["error": "\(error)"])
        }
        return try get(id)
    }

    func run(_ req: MigrationStart, _ agent: HostAgent) async {
        let id = req.id
        var engine = ConvergenceEngine(policy: req.policy)
        var request = MigrationRequest()
        request.copyDisks = req.copyDisks
        request.incremental = req.incremental
        request.bandwidthMiBps = req.bandwidthMiBps.map(UInt64.init)
        request.autoConverge = req.policy.autoConverge
        request.autoConvergeInitialPercent = Int32(req.policy.autoConvergeInitialPercent)
        request.autoConvergeIncrementPercent = Int32(req.policy.autoConvergeIncrementPercent)
        request.postCopy = req.policy.postCopy
        request.unsafe = req.unsafe ?? false
        // Over TLS, QEMU's own streams (memory, copied disks) are encrypted too, not only libvirtd's.
        request.tls = req.destinationURI.hasPrefix("qemu+tls://")
        let uri = req.destinationURI
        let vm = req.vm
        let logger = agent.logger

        let conn: Connection
        let dom: Domain
        do {
            conn = try agent.supervisor.connection()
            dom = try await conn.run { c in try c.domain(named: vm) }
            for action in engine.start() { try await apply(action, dom, conn) }
        } catch {
            finish(id, phase: "failed", error: "\(error)", steps: engine.steps, sourceState: nil, agent)
            return
        }
        update(id) { $0.steps = engine.steps }
        let initialEngine = engine
        let migrationRequest = request

        let outcome: Result<Void, any Error> = await withTaskGroup(of: Result<Void, any Error>?.self) { group in
            group.addTask {
                do {
                    try await conn.run { _ in try dom.migrate(to: uri, migrationRequest) }
                    return .success(())
                } catch {
                    return .failure(error)
                }
            }
            group.addTask {
                var engine = initialEngine
                var memoryPhaseStartMs: Int64?
                var abortSent = false
                while !Task.isCancelled {
                    try? await Task.sleep(for: Self.pollInterval)
                    if Task.isCancelled { break }
                    guard let (type, stats) = try? await conn.run({ _ in try dom.jobStats() }),
                        type == .bounded || type == .unbounded
                    else { continue }
                    // A cancel that arrived before libvirt had created the job is carried out now.
                    if !abortSent && self.lock.withLock({ self.cancelRequests.contains(id) }) {
                        abortSent = (try? await conn.run { _ in try dom.abortJob() }) != nil
                    }
                    let postCopy = (try? await conn.run { _ in try dom.isInPostCopy() }) ?? false
                    let elapsed = stats["time_elapsed"]?.intValue ?? 0
                    let iteration = Int(stats["memory_iteration"]?.intValue ?? 0)
                    // Local disks are copied before memory; the policy's clock starts with the memory phase.
                    if memoryPhaseStartMs == nil && (iteration >= 1 || (stats["memory_processed"]?.intValue ?? 0) > 0) {
                        memoryPhaseStartMs = elapsed
                    }
                    let pageSize = stats["memory_page_size"]?.intValue ?? 4096
                    let sample = JobSample(
                        elapsedMs: elapsed - (memoryPhaseStartMs ?? elapsed), iteration: iteration,
                        dataTotal: stats["data_total"]?.intValue ?? 0, dataProcessed: stats["data_processed"]?.intValue ?? 0,
                        dataRemaining: stats["memory_remaining"]?.intValue ?? stats["data_remaining"]?.intValue ?? 0,
                        dirtyRate: (stats["memory_dirty_rate"]?.intValue ?? 0) * pageSize,
                        bandwidth: stats["memory_bps"]?.intValue ?? 0, postCopy: postCopy,
                        throttlePercent: Int(stats["auto_converge_throttle"]?.intValue ?? 0))
                    let actions = memoryPhaseStartMs == nil ? [] : engine.observe(sample)
                    self.update(id) { r in
                        r.sample = sample
                        r.elapsedMs = elapsed
                        r.memoryTotal = stats["memory_total"]?.intValue ?? 0
                        r.memoryProcessed = stats["memory_processed"]?.intValue ?? 0
                        r.memoryRemaining = stats["memory_remaining"]?.intValue ?? 0
                        r.diskTotal = stats["disk_total"]?.intValue ?? 0
                        r.diskProcessed = stats["disk_processed"]?.intValue ?? 0
                        r.diskRemaining = stats["disk_remaining"]?.intValue ?? 0
                        if postCopy && r.phase == "running" { r.phase = "post-copy" }
                        r.steps = engine.steps
                    }
                    for action in actions {
                        do {
                            try await self.apply(action, dom, conn)
                            if case .startPostCopy = action { self.update(id) { $0.phase = "post-copy" } }
                        } catch {
                            logger.warning("migration policy step failed", metadata: ["id": "\(id)", "error": "\(error)"])
                            engine.stepFailed(atMs: sample.elapsedMs, iteration: iteration, detail: "\(error)")
                        }
                    }
                    self.update(id) { $0.steps = engine.steps }
                }
                return nil
            }
            var result: Result<Void, any Error> = .success(())
            for await r in group {
                if let r {
                    result = r
                    group.cancelAll()
                }
            }
            return result
        }

        let steps = lock.withLock { records[id]?.steps } ?? engine.steps
        switch outcome {
        case .success:
            finish(id, phase: "completed", error: nil, steps: steps, sourceState: nil, agent)
        case .failure(let error):
            let cancelled = lock.withLock { cancelRequests.contains(id) }
            let aborted = steps.contains { $0.action == "abort" }
            let suspended = steps.contains { $0.action == "suspend" }
            // Never leave the guest paused on the source because of us.
            var state = try? await conn.run { _ in try dom.state().0 }
            if suspended, state == .paused {
                try? await conn.run { _ in try dom.resume() }
                state = try? await conn.run { _ in try dom.state().0 }
            }
            let phase = cancelled ? "cancelled" : aborted ? "aborted" : "failed"
            let message = cancelled ? "cancelled by the operator" : aborted ? (steps.last { $0.action == "abort" }?.detail ?? "aborted by the policy") : "\(error)"
            finish(id, phase: phase, error: message, steps: steps, sourceState: state?.rawValue, agent)
        }
    }

    func apply(_ action: PolicyAction, _ dom: Domain, _ conn: Connection) async throws {
        switch action {
        case .setDowntime(let ms): try await conn.run { _ in try dom.setMigrationMaxDowntime(ms: UInt64(ms)) }
        case .startPostCopy: try await conn.run { _ in try dom.startPostCopy() }
        case .suspend: try await conn.run { _ in try dom.suspend() }
        case .abort: try await conn.run { _ in try dom.abortJob() }
        case .note: break
        }
    }

    func finish(_ id: String, phase: String, error: String?, steps: [PolicyStep], sourceState: String?, _ agent: HostAgent) {
        var vm = ""
        update(id) { r in
            r.phase = phase
            r.error = error
            r.steps = steps
            r.sourceState = sourceState
            r.elapsedMs = max(r.elapsedMs, Int64(Date().timeIntervalSince1970 * 1000) - r.startedMs)
            vm = r.vm
        }
        _ = agent.hub.publish(kind: "migration", domain: vm, event: phase, detail: error, info: ["id": id])
        agent.logger.info("migration \(phase)", metadata: ["id": "\(id)", "vm": "\(vm)", "error": "\(error ?? "")"])
    }
}

// MARK: Disks, pricing facts and the destination's side

extension HostAgent {
    /// The VM's disk images (from its definition) with qemu-img's view of each.
    public func disks(_ name: String) async throws(AgentError) -> [DiskImage] {
        let disks = try await withLibvirt { c in
            try DomainXML.parse(try c.domain(named: name).xml()).disks
        }
        var out: [DiskImage] = []
        // Network (RBD) disks are reached from every host: nothing of them moves with the VM.
        for d in disks where !d.network {
            let path = d.path
            do {
                guard let obj = try await Self.imageInfo(path) else {
                    throw AgentError.internalError("qemu-img info \(path): not a JSON object")
                }
                out.append(DiskImage(
                    target: d.target, path: path, format: obj["format"]?.string ?? d.format,
                    virtualSize: obj["virtual-size"]?.int64 ?? 0,
                    actualSize: obj["actual-size"]?.int64 ?? 0,
                    backingFile: obj["full-backing-filename"]?.string ?? obj["backing-filename"]?.string,
                    backingFormat: obj["backing-filename-format"]?.string, readonly: d.readonly))
            } catch let e as AgentError {
                throw e
            } catch {
                // The host's state, not the agent, is at fault: a disk the definition names cannot be read.
                throw AgentError.conflict("disk \(d.target) (\(path)) cannot be read: \(error)")
            }
        }
        return out
    }

    /// Creates empty images to receive disks that a migration copies here. Refuses to touch an existing
    /// file: it may belong to another VM.
    public func prepareDisks(_ req: DiskPrepare) async throws(AgentError) -> DiskPrepareResult {
        var problems: [ValidationProblem] = []
        for (i, d) in req.disks.enumerated() {
            if !d.path.hasPrefix("/") || d.path.contains("/../") || d.path.hasSuffix("/..") {
                problems.append(.init("disks[\(i)].path", "must be an absolute path without .."))
            }
            if !["qcow2", "raw"].contains(d.format) { problems.append(.init("disks[\(i)].format", "must be qcow2 or raw")) }
            if d.virtualSize <= 0 { problems.append(.init("disks[\(i)].virtualSize", "must be positive")) }
            if let b = d.backingFile, !b.hasPrefix("/") { problems.append(.init("disks[\(i)].backingFile", "must be an absolute path")) }
        }
        if !problems.isEmpty { throw AgentError.invalid(problems) }
        for (i, d) in req.disks.enumerated() {
            if let problem = try await diskPathProblem(d.path) { problems.append(.init("disks[\(i)].path", problem)) }
        }
        if !problems.isEmpty { throw AgentError.invalid(problems) }
        let fm = FileManager.default
        if let missing = (req.mustExist ?? []).first(where: { !fm.fileExists(atPath: $0) }) {
            throw AgentError.conflict("\(missing) is not visible on this host: is its shared pool mounted here?")
        }
        if let taken = req.disks.first(where: { fm.fileExists(atPath: $0.path) }) {
            throw AgentError.conflict("\(taken.path) exists on this host; it will not be overwritten")
        }
        let backingPresent = req.disks.allSatisfy { d in d.backingFile.map { fm.fileExists(atPath: $0) } ?? false }
        var created: [String] = []
        do {
            for d in req.disks {
                try fm.createDirectory(atPath: URL(fileURLWithPath: d.path).deletingLastPathComponent().path, withIntermediateDirectories: true)
                var args = ["create", "-q", "-f", d.format]
                if backingPresent, let b = d.backingFile {
                    args += ["-b", b, "-F", d.backingFormat ?? "qcow2"]
                }
                args += ["--", d.path, String(d.virtualSize)]
                // Recorded before it exists: only what this agent made may be released later.
                preparedDisks.add(d.path)
                _ = try await Subprocess.run("qemu-img", args)
                created.append(d.path)
            }
        } catch {
            for p in created { try? fm.removeItem(atPath: p) }
            for d in req.disks { preparedDisks.remove(d.path) }
            throw AgentError.internalError("\(error)")
        }
        return DiskPrepareResult(created: created, backingPresent: backingPresent)
    }

    /// Removes disk images no VM on this host uses: those a failed migration had prepared here, or the
    /// source's copies once a migration moved them away. Only images this agent prepared
    /// (`prepareDisks`, recorded in its data directory) or that lie in its storage pools and diskDirs
    /// are removed: a host file, a device or anything elsewhere is left as it is, whatever the caller says.
    public func releaseDisks(_ paths: [String]) async throws(AgentError) -> [String] {
        let inUse = try await withLibvirt { c -> Set<String> in
            var used = Set<String>()
            for d in try c.domains() {
                guard let xml = try Self.ifStillThere({ try d.xml() }) else { continue }
                for disk in (try? DomainXML.parse(xml).disks) ?? [] { used.insert(disk.path) }
            }
            return used
        }
        var removed: [String] = []
        var removable: [String] = []
        for p in paths where !inUse.contains(p) {
            if preparedDisks.contains(p) { removable.append(p) } else if try await diskPathProblem(p) == nil { removable.append(p) }
        }
        for p in removable {
            if !FileManager.default.fileExists(atPath: p) {
                preparedDisks.remove(p)
            } else if (try? FileManager.default.removeItem(atPath: p)) != nil {
                preparedDisks.remove(p)
                removed.append(p)
            }
        }
        return removed
    }

    /// What pricing needs: memory, resident memory and a fresh dirty-rate measurement (about 1 s).
    public func migrationFacts(_ name: String, measureSeconds: Int32 = 1) async throws(AgentError) -> MigrationFacts {
        let (memory, rss, started) = try await withLibvirt { c -> (Int64, Int64, Bool) in
            let d = try c.domain(named: name)
            let info = try d.info()
            let stats = try c.allDomainStats()[name] ?? [:]
            let started = (try? d.startDirtyRateCalc(seconds: measureSeconds)) != nil
            return (Int64(info.maxMemoryKiB) * 1024, (stats["balloon.rss"]?.intValue ?? 0) * 1024, started)
        }
        var rate: Int64?
        if started {
            try? await Task.sleep(for: .milliseconds(Int(measureSeconds) * 1000 + 100))
            for _ in 0..<20 {
                rate = try? await withLibvirt { c in try c.domain(named: name).dirtyRate() }
                if rate != nil { break }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        return MigrationFacts(
            vm: name, memoryBytes: memory, residentBytes: min(memory, rss), dirtyRate: rate.map { $0 << 20 },
            disks: try await disks(name))
    }

    /// The last finished incoming (or outgoing) migration job of a VM on this host.
    public func completedJob(_ name: String) async throws(AgentError) -> CompletedJob {
        try await withLibvirt { c in
            let (type, stats) = try c.domain(named: name).jobStats(completed: true)
            guard type == .completed else { throw AgentError.notFound("no completed job for \(name)") }
            return CompletedJob(
                vm: name, timeElapsedMs: stats["time_elapsed"]?.intValue ?? 0, downtimeMs: stats["downtime"]?.intValue ?? 0,
                dataTotal: stats["data_total"]?.intValue ?? 0, dataProcessed: stats["data_processed"]?.intValue ?? 0,
                memoryBps: stats["memory_bps"]?.intValue ?? 0, iterations: Int(stats["memory_iteration"]?.intValue ?? 0),
                raw: stats.mapValues(Self.scalar))
        }
    }

    /// After an incoming migration: resume a guest the policy paused, and apply the memory hard limit
    /// live where the definition cannot carry it.
    public func settleIncoming(_ name: String, resume: Bool) async throws(AgentError) -> ActionResult {
        let live = !hardLimitInDefinition
        return try await withLibvirt { c in
            let d = try c.domain(named: name)
            let (state, _) = try d.state()
            if resume && state == .paused { try d.resume() }
            if live, let spec = try? DomainXML.parse(d.xml(inactive: true)).spec {
                let tuning = HostTuning.from(spec, hostCoreMHz: try c.nodeInfo().mhz)
                if let hard = tuning.memoryHardLimitKiB {
                    try d.setMemoryParameters(hardLimitKiB: UInt64(hard), live: true, config: false)
                }
            }
            return ActionResult(name: name, action: "settle", state: try d.state().0.rawValue, how: nil)
        }
    }
}
