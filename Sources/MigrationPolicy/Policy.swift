/// Convergence control for live migration: named policies and a pure engine that reads a migration
/// job's statistics (about twice a second) and decides what to do next. No I/O: the agent feeds it
/// samples and carries out its actions through libvirt.
///
/// The shape follows oVirt VDSM's convergence schedules (an initial downtime, then escalation each time
/// precopy stalls) and Nova's libvirt driver (downtime steps, a completion budget, post-copy).

/// One reading of a running migration job (libvirt's job statistics).
public struct JobSample: Sendable, Codable, Equatable {
    /// Since the migration started.
    public var elapsedMs: Int64
    /// Precopy pass, 1 for the first.
    public var iteration: Int
    public var dataTotal: Int64
    public var dataProcessed: Int64
    public var dataRemaining: Int64
    /// Bytes per second the guest dirties (pages/s x page size).
    public var dirtyRate: Int64
    /// Bytes per second the migration stream carries.
    public var bandwidth: Int64
    /// Whether the migration is in its post-copy phase.
    public var postCopy: Bool
    /// CPU throttle that auto-converge applies, in percent.
    public var throttlePercent: Int

    public init(
        elapsedMs: Int64, iteration: Int, dataTotal: Int64 = 0, dataProcessed: Int64 = 0, dataRemaining: Int64,
        dirtyRate: Int64 = 0, bandwidth: Int64 = 0, postCopy: Bool = false, throttlePercent: Int = 0
    ) {
        self.elapsedMs = elapsedMs
        self.iteration = iteration
        self.dataTotal = dataTotal
        self.dataProcessed = dataProcessed
        self.dataRemaining = dataRemaining
        self.dirtyRate = dirtyRate
        self.bandwidth = bandwidth
        self.postCopy = postCopy
        self.throttlePercent = throttlePercent
    }
}

/// What the engine asks the agent to do.
public enum PolicyAction: Sendable, Equatable, Codable {
    /// Raise (or set) the maximum downtime QEMU may take to switch over.
    case setDowntime(ms: Int)
    /// Switch the running migration to post-copy (needs the post-copy flag at start).
    case startPostCopy
    /// Pause the guest so that the remaining memory stops changing (the migration then completes).
    case suspend
    /// Give up: the VM keeps running on the source.
    case abort(reason: String)
    /// Nothing to do; recorded on the migration (auto-converge throttling, for instance).
    case note(String)
}

/// A step the engine took, as recorded on the migration.
public struct PolicyStep: Sendable, Codable, Equatable {
    public var atMs: Int64
    public var iteration: Int
    public var action: String
    public var detail: String

    public init(atMs: Int64, iteration: Int, action: String, detail: String) {
        self.atMs = atMs
        self.iteration = iteration
        self.action = action
        self.detail = detail
    }
}

/// A convergence policy. The named ones are presets; every field can be given explicitly.
public struct ConvergencePolicy: Sendable, Codable, Equatable {
    public var name: String
    /// Maximum downtime at start (QEMU's default is 300 ms).
    public var initialDowntimeMs: Int
    /// Downtime reached after the last step.
    public var maxDowntimeMs: Int
    /// How many steps lead from the initial to the maximum downtime.
    public var downtimeSteps: Int
    /// Passes without progress (remaining data not below its lowest so far) before the next escalation.
    public var stallIterations: Int
    /// Start with QEMU's auto-converge (CPU throttling when dirtying outpaces the link).
    public var autoConverge: Bool
    public var autoConvergeInitialPercent: Int
    public var autoConvergeIncrementPercent: Int
    /// Start with the post-copy capability and switch once precopy is exhausted.
    public var postCopy: Bool
    /// Pause the guest once precopy is exhausted (or at the budget) so that the migration completes.
    public var suspendIfNeeded: Bool
    /// Wall-clock budget; at its end: post-copy, suspend, or abort, whichever the policy allows first.
    public var budgetSeconds: Int
    /// Abort when the remaining data has not reached a new low for this long (and nothing else is left).
    public var progressTimeoutSeconds: Int

    public init(
        name: String, initialDowntimeMs: Int = 100, maxDowntimeMs: Int = 500, downtimeSteps: Int = 4,
        stallIterations: Int = 1, autoConverge: Bool = false, autoConvergeInitialPercent: Int = 20,
        autoConvergeIncrementPercent: Int = 10, postCopy: Bool = false, suspendIfNeeded: Bool = false,
        budgetSeconds: Int = 300, progressTimeoutSeconds: Int = 120
    ) {
        self.name = name
        self.initialDowntimeMs = initialDowntimeMs
        self.maxDowntimeMs = maxDowntimeMs
        self.downtimeSteps = downtimeSteps
        self.stallIterations = stallIterations
        self.autoConverge = autoConverge
        self.autoConvergeInitialPercent = autoConvergeInitialPercent
        self.autoConvergeIncrementPercent = autoConvergeIncrementPercent
        self.postCopy = postCopy
        self.suspendIfNeeded = suspendIfNeeded
        self.budgetSeconds = budgetSeconds
        self.progressTimeoutSeconds = progressTimeoutSeconds
    }

    public static let names = ["minimal-downtime", "auto-converge", "post-copy", "suspend-if-needed"]

    /// The named presets. `budgetSeconds` defaults to 64 s per GiB of guest memory, at least 60 s
    /// (VDSM's migration_max_time_per_gib_mem).
    public static func named(_ name: String, memoryMiB: Int = 1024, budgetSeconds: Int? = nil) -> ConvergencePolicy? {
        let budget = budgetSeconds ?? max(60, (memoryMiB * 64 + 1023) / 1024)
        switch name {
        case "minimal-downtime":
            // Precopy only; downtime from 100 to 500 ms in 4 steps as precopy stalls; abort at the budget.
            return ConvergencePolicy(name: name, budgetSeconds: budget)
        case "auto-converge":
            return ConvergencePolicy(name: name, autoConverge: true, budgetSeconds: budget)
        case "post-copy":
            // One full precopy pass, then post-copy as soon as a pass makes no progress. The guest runs on
            // the destination from then on; a broken link in post-copy loses the VM, which is why this is
            // not the default.
            return ConvergencePolicy(
                name: name, initialDowntimeMs: 300, maxDowntimeMs: 300, downtimeSteps: 0, postCopy: true,
                budgetSeconds: budget)
        case "suspend-if-needed":
            return ConvergencePolicy(name: name, suspendIfNeeded: true, budgetSeconds: budget)
        default:
            return nil
        }
    }

    /// Problems with explicit values, each naming its field.
    public func problems(path: String = "policy") -> [(String, String)] {
        var out: [(String, String)] = []
        if !(1...60_000).contains(initialDowntimeMs) { out.append(("\(path).initialDowntimeMs", "must be between 1 and 60000")) }
        if maxDowntimeMs < initialDowntimeMs || maxDowntimeMs > 60_000 {
            out.append(("\(path).maxDowntimeMs", "must be between initialDowntimeMs and 60000"))
        }
        if !(0...100).contains(downtimeSteps) { out.append(("\(path).downtimeSteps", "must be between 0 and 100")) }
        if !(1...100).contains(stallIterations) { out.append(("\(path).stallIterations", "must be between 1 and 100")) }
        if !(1...99).contains(autoConvergeInitialPercent) { out.append(("\(path).autoConvergeInitialPercent", "must be between 1 and 99")) }
        if !(1...99).contains(autoConvergeIncrementPercent) { out.append(("\(path).autoConvergeIncrementPercent", "must be between 1 and 99")) }
        if !(1...86_400).contains(budgetSeconds) { out.append(("\(path).budgetSeconds", "must be between 1 and 86400")) }
        if !(1...86_400).contains(progressTimeoutSeconds) { out.append(("\(path).progressTimeoutSeconds", "must be between 1 and 86400")) }
        return out
    }

    /// The downtime limit after `step` escalations.
    public func downtime(afterStep step: Int) -> Int {
        guard downtimeSteps > 0 else { return initialDowntimeMs }
        let s = min(max(step, 0), downtimeSteps)
        return initialDowntimeMs + (maxDowntimeMs - initialDowntimeMs) * s / downtimeSteps
    }
}

/// The engine: feed it samples in time order; it returns the actions to carry out now.
/// Invariants (property-tested): the downtime it sets never decreases and stays within the policy's
/// bounds; it starts post-copy only when the policy allows it, at most once, and never aborts after it
/// (post-copy cannot be undone); it ends the migration (abort) at most once.
public struct ConvergenceEngine: Sendable {
    public let policy: ConvergencePolicy
    public private(set) var downtimeMs: Int
    public private(set) var steps: [PolicyStep] = []
    public private(set) var phase: Phase = .precopy

    public enum Phase: String, Sendable, Codable {
        case precopy, postCopy, suspended, aborted
    }

    var downtimeStep = 0
    var lowestRemaining = Int64.max
    var lastProgressMs: Int64 = 0
    var lastIteration = 0
    var stalledPasses = 0
    var lastThrottle = 0

    public init(policy: ConvergencePolicy) {
        self.policy = policy
        self.downtimeMs = policy.initialDowntimeMs
    }

    /// The actions to take before the migration starts (its initial downtime).
    public mutating func start() -> [PolicyAction] {
        record(0, 0, .setDowntime(ms: downtimeMs), "initial downtime \(downtimeMs) ms (policy \(policy.name))")
        return [.setDowntime(ms: downtimeMs)]
    }

    public mutating func observe(_ s: JobSample) -> [PolicyAction] {
        var actions: [PolicyAction] = []
        if s.postCopy && phase == .precopy { phase = .postCopy }
        guard phase == .precopy else { return [] }

        if s.throttlePercent != lastThrottle {
            lastThrottle = s.throttlePercent
            let a = PolicyAction.note("auto-converge throttles the guest's CPUs at \(s.throttlePercent)%")
            record(s.elapsedMs, s.iteration, a, nil)
            actions.append(a)
        }

        // Progress: the remaining data reaches a new low. A pass that ends without one is a stall.
        if s.dataRemaining < lowestRemaining {
            lowestRemaining = s.dataRemaining
            lastProgressMs = s.elapsedMs
        }
        if s.iteration > lastIteration {
            // Passes after the first are compared with the lowest remaining data seen before them.
            if lastIteration >= 1 {
                if s.elapsedMs == lastProgressMs { stalledPasses = 0 } else { stalledPasses += s.iteration - lastIteration }
            }
            lastIteration = s.iteration
        }

        let overBudget = s.elapsedMs >= Int64(policy.budgetSeconds) * 1000
        let noProgress = s.elapsedMs - lastProgressMs >= Int64(policy.progressTimeoutSeconds) * 1000
        if stalledPasses >= policy.stallIterations || overBudget || noProgress {
            stalledPasses = 0
            if !overBudget && !noProgress && downtimeStep < policy.downtimeSteps {
                downtimeStep += 1
                downtimeMs = policy.downtime(afterStep: downtimeStep)
                let a = PolicyAction.setDowntime(ms: downtimeMs)
                record(s.elapsedMs, s.iteration, a, "precopy stalled: downtime step \(downtimeStep)/\(policy.downtimeSteps)")
                actions.append(a)
            } else if policy.postCopy {
                phase = .postCopy
                let why = overBudget ? "budget of \(policy.budgetSeconds) s reached" : noProgress ? "no progress for \(policy.progressTimeoutSeconds) s" : "precopy stalled after its last downtime step"
                record(s.elapsedMs, s.iteration, .startPostCopy, why)
                actions.append(.startPostCopy)
            } else if policy.suspendIfNeeded && (overBudget || noProgress || policy.downtimeSteps == downtimeStep) {
                phase = .suspended
                let why = overBudget ? "budget of \(policy.budgetSeconds) s reached" : noProgress ? "no progress for \(policy.progressTimeoutSeconds) s" : "precopy stalled after its last downtime step"
                record(s.elapsedMs, s.iteration, .suspend, why)
                actions.append(.suspend)
            } else if overBudget || noProgress {
                phase = .aborted
                let why = overBudget
                    ? "did not converge within the budget of \(policy.budgetSeconds) s"
                    : "no progress for \(policy.progressTimeoutSeconds) s"
                let a = PolicyAction.abort(reason: why)
                record(s.elapsedMs, s.iteration, a, why)
                actions.append(a)
            }
        }
        return actions
    }

    /// Records a step taken from outside (an operator's cancel, for instance).
    public mutating func recordExternal(atMs: Int64, iteration: Int, action: String, detail: String) {
        if action == "abort" { phase = .aborted }
        steps.append(PolicyStep(atMs: atMs, iteration: iteration, action: action, detail: detail))
    }

    /// The last step could not be carried out (libvirt refused it): the engine goes back to precopy, so
    /// that the next sample decides again (and the budget's end is enforced again).
    public mutating func stepFailed(atMs: Int64, iteration: Int, detail: String) {
        if phase != .precopy { phase = .precopy }
        steps.append(PolicyStep(atMs: atMs, iteration: iteration, action: "step-failed", detail: detail))
    }

    mutating func record(_ at: Int64, _ iteration: Int, _ a: PolicyAction, _ detail: String?) {
        let (name, text): (String, String)
        switch a {
        case .setDowntime(let ms): (name, text) = ("set-downtime", "\(ms) ms")
        case .startPostCopy: (name, text) = ("post-copy", "switched to post-copy")
        case .suspend: (name, text) = ("suspend", "guest paused to finish the migration")
        case .abort(let r): (name, text) = ("abort", r)
        case .note(let n): (name, text) = ("note", n)
        }
        steps.append(PolicyStep(atMs: at, iteration: iteration, action: name, detail: detail.map { "\(text): \($0)" } ?? text))
    }
}
