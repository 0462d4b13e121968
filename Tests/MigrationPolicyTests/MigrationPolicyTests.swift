import ClusterModel
import MigrationPolicy
import Placement
import Testing
import TestSupport

let MiB: Int64 = 1 << 20

/// A random migration job as the engine would see it: remaining data that sometimes shrinks, sometimes
/// stalls, passes that end at random, throttling that rises.
func randomSamples(_ r: inout SplitMix) -> [JobSample] {
    var out: [JobSample] = []
    var t: Int64 = 0
    var iteration = 1
    var remaining = Int64(r.int(16...512)) * MiB
    var throttle = 0
    for _ in 0..<r.int(1...400) {
        t += Int64(r.int(100...2000))
        if r.int(0...3) == 0 { iteration += r.int(1...2) }
        switch r.int(0...2) {
        case 0: remaining = max(0, remaining - Int64(r.int(0...64)) * MiB)
        case 1: remaining += Int64(r.int(0...32)) * MiB
        default: break
        }
        if r.int(0...20) == 0 { throttle = min(99, throttle + 10) }
        out.append(JobSample(
            elapsedMs: t, iteration: iteration, dataRemaining: remaining, dirtyRate: Int64(r.int(0...100)) * MiB,
            bandwidth: Int64(r.int(1...200)) * MiB, postCopy: false, throttlePercent: throttle))
    }
    return out
}

func randomPolicy(_ r: inout SplitMix) -> ConvergencePolicy {
    if r.int(0...1) == 0 {
        let name = ConvergencePolicy.names[r.int(0...(ConvergencePolicy.names.count - 1))]
        return ConvergencePolicy.named(name, memoryMiB: r.int(64...8192), budgetSeconds: r.int(0...1) == 0 ? nil : r.int(5...600))!
    }
    let initial = r.int(10...1000)
    return ConvergencePolicy(
        name: "custom", initialDowntimeMs: initial, maxDowntimeMs: initial + r.int(0...2000), downtimeSteps: r.int(0...10),
        stallIterations: r.int(1...4), autoConverge: r.int(0...1) == 0, postCopy: r.int(0...2) == 0,
        suspendIfNeeded: r.int(0...2) == 0, budgetSeconds: r.int(5...600), progressTimeoutSeconds: r.int(5...300))
}

@Suite struct EngineProperties {
    @Test(arguments: 0..<500)
    func engineInvariants(seed: Int) {
        var r = SplitMix(seed)
        let policy = randomPolicy(&r)
        #expect(policy.problems().isEmpty)
        var engine = ConvergenceEngine(policy: policy)
        var downtime = 0
        var ended = false
        var postCopies = 0
        var aborts = 0
        var suspends = 0
        for a in engine.start() {
            if case .setDowntime(let ms) = a { downtime = ms }
        }
        #expect(downtime == policy.initialDowntimeMs)
        for s in randomSamples(&r) {
            let actions = engine.observe(s)
            if ended { #expect(actions.isEmpty, "no action after the migration was ended or switched") }
            for a in actions {
                switch a {
                case .setDowntime(let ms):
                    #expect(ms >= downtime, "downtime never decreases")
                    #expect(ms >= policy.initialDowntimeMs && ms <= policy.maxDowntimeMs)
                    downtime = ms
                case .startPostCopy:
                    #expect(policy.postCopy)
                    postCopies += 1
                    ended = true
                case .suspend:
                    #expect(policy.suspendIfNeeded)
                    suspends += 1
                    ended = true
                case .abort:
                    aborts += 1
                    ended = true
                case .note:
                    break
                }
            }
        }
        #expect(postCopies + aborts + suspends <= 1)
        #expect(engine.downtimeMs == downtime)
        // Every action is on the record.
        #expect(engine.steps.count >= 1)
    }

    @Test(arguments: 0..<200)
    func convergingJobsAreLeftAlone(seed: Int) {
        // Remaining data reaching a new low at every pass: no escalation, no abort before the budget.
        var r = SplitMix(seed)
        let policy = ConvergencePolicy.named(ConvergencePolicy.names[r.int(0...3)], memoryMiB: 1024)!
        var engine = ConvergenceEngine(policy: policy)
        _ = engine.start()
        var remaining: Int64 = 1 << 40
        var t: Int64 = 0
        for i in 1...30 {
            t += 500
            remaining -= remaining * Int64(r.int(1...5)) / 10
            let actions = engine.observe(JobSample(elapsedMs: t, iteration: i, dataRemaining: remaining))
            #expect(actions.isEmpty)
        }
        #expect(engine.phase == .precopy)
    }
}

@Suite struct EngineScenarios {
    /// A guest dirtying faster than the link: every pass leaves as much as the one before.
    func stalled(_ policy: ConvergencePolicy, seconds: Int) -> ConvergenceEngine {
        var engine = ConvergenceEngine(policy: policy)
        _ = engine.start()
        var t: Int64 = 0
        var i = 1
        while t < Int64(seconds) * 1000 {
            t += 500
            if t % 4000 == 0 { i += 1 }
            _ = engine.observe(JobSample(elapsedMs: t, iteration: i, dataRemaining: 64 * MiB, dirtyRate: 40 * MiB, bandwidth: 8 * MiB))
            if engine.phase != .precopy { break }
        }
        return engine
    }

    @Test func minimalDowntimeStepsThenAbortsAtItsBudget() {
        let engine = stalled(ConvergencePolicy.named("minimal-downtime", budgetSeconds: 60)!, seconds: 120)
        #expect(engine.phase == .aborted)
        #expect(engine.downtimeMs == 500)
        let actions = engine.steps.map(\.action)
        #expect(actions.filter { $0 == "set-downtime" }.count == 5)
        #expect(actions.last == "abort")
        #expect(engine.steps.last!.atMs >= 60_000 && engine.steps.last!.atMs < 61_000)
    }

    @Test func postCopySwitchesAfterTheFirstStalledPass() {
        let engine = stalled(ConvergencePolicy.named("post-copy", budgetSeconds: 60)!, seconds: 120)
        #expect(engine.phase == .postCopy)
        let switchStep = engine.steps.first { $0.action == "post-copy" }!
        #expect(switchStep.iteration == 2)
        #expect(switchStep.atMs < 15_000)
    }

    @Test func suspendIfNeededPausesOnceTheStepsAreSpent() {
        let engine = stalled(ConvergencePolicy.named("suspend-if-needed", budgetSeconds: 600)!, seconds: 600)
        #expect(engine.phase == .suspended)
        #expect(engine.downtimeMs == 500)
        #expect(engine.steps.last!.action == "suspend")
    }

    @Test func aFailedStepIsDecidedAgain() {
        // The abort at the budget fails (libvirt refused): the next sample asks for it again.
        var engine = ConvergenceEngine(policy: ConvergencePolicy.named("minimal-downtime", budgetSeconds: 10)!)
        _ = engine.start()
        var aborts = 0
        for t in stride(from: Int64(500), through: 12_000, by: 500) {
            for a in engine.observe(JobSample(elapsedMs: t, iteration: 1, dataRemaining: 64 * MiB)) {
                if case .abort = a {
                    aborts += 1
                    if aborts == 1 { engine.stepFailed(atMs: t, iteration: 1, detail: "job not ready") }
                }
            }
        }
        #expect(aborts == 2)
        #expect(engine.phase == .aborted)
    }

    @Test func autoConvergeThrottlingIsRecorded() {
        var engine = ConvergenceEngine(policy: ConvergencePolicy.named("auto-converge")!)
        _ = engine.start()
        let a = engine.observe(JobSample(elapsedMs: 500, iteration: 2, dataRemaining: 10 * MiB, throttlePercent: 20))
        #expect(a == [.note("auto-converge throttles the guest's CPUs at 20%")])
        #expect(engine.observe(JobSample(elapsedMs: 1000, iteration: 2, dataRemaining: 9 * MiB, throttlePercent: 20)).isEmpty)
    }

    @Test func namedPoliciesAndBudgets() {
        for n in ConvergencePolicy.names { #expect(ConvergencePolicy.named(n)?.problems().isEmpty == true) }
        #expect(ConvergencePolicy.named("nope") == nil)
        #expect(ConvergencePolicy.named("minimal-downtime", memoryMiB: 256)!.budgetSeconds == 60)
        #expect(ConvergencePolicy.named("minimal-downtime", memoryMiB: 4096)!.budgetSeconds == 256)
        let p = ConvergencePolicy(name: "x", initialDowntimeMs: 0, maxDowntimeMs: -1, budgetSeconds: 0)
        #expect(p.problems().map(\.0) == ["policy.initialDowntimeMs", "policy.maxDowntimeMs", "policy.budgetSeconds"])
    }
}

@Suite struct PricingProperties {
    func randomInput(_ r: inout SplitMix) -> PriceInput {
        let mem = Int64(r.int(64...16384)) * MiB
        return PriceInput(
            memoryBytes: mem, dataBytes: mem * Int64(r.int(0...100)) / 100, dirtyRate: Int64(r.int(0...400)) * MiB,
            bandwidth: Int64(r.int(1...1200)) * MiB, workingSetBytes: mem * Int64(r.int(1...100)) / 100,
            diskBytes: r.int(0...3) == 0 ? Int64(r.int(0...4096)) * MiB : 0)
    }

    @Test(arguments: 0..<400)
    func monotone(seed: Int) {
        var r = SplitMix(seed)
        let policy = randomPolicy(&r)
        let base = randomInput(&r)
        let p0 = Pricing.price(base, policy: policy)
        #expect(p0.totalMs > 0 && p0.downtimeMs >= 0 && p0.bytes >= 0)
        var fixed = policy
        fixed.downtimeSteps = 0
        let f0 = Pricing.price(base, policy: fixed)
        // With a fixed downtime limit, a faster link or a calmer guest never costs more. (Downtime steps are
        // triggered by stalling, so a calmer guest may do one more pass instead of a raised limit: only
        // convergence is compared there.)
        var faster = base
        faster.bandwidth *= 2
        let p1 = Pricing.price(faster, policy: policy)
        let f1 = Pricing.price(faster, policy: fixed)
        if p0.converges { #expect(p1.converges) }
        if f0.outcome == "precopy" {
            #expect(f1.outcome == "precopy")
            #expect(f1.totalMs <= f0.totalMs)
        }
        var calmer = base
        calmer.dirtyRate /= 2
        let p2 = Pricing.price(calmer, policy: policy)
        let f2 = Pricing.price(calmer, policy: fixed)
        if p0.converges { #expect(p2.converges) }
        if f0.outcome == "precopy" {
            #expect(f2.outcome == "precopy")
            #expect(f2.totalMs <= f0.totalMs)
            #expect(f2.bytes <= f0.bytes)
        }
        var idle = base
        idle.dirtyRate = 0
        let p3 = Pricing.price(idle, policy: policy)
        #expect(p3.converges && p3.outcome == "precopy" && p3.iterations == 1)
    }

    @Test func idleGuestMatchesTheTestbed() {
        // FACTS.md: 256 MiB TCG guest, about 87 MiB of data, ~300 MiB/s: libvirt's job took 0.7-0.9 s.
        let p = Pricing.price(
            PriceInput(memoryBytes: 256 * MiB, dataBytes: 87 * MiB, dirtyRate: 0, bandwidth: 300 * MiB),
            policy: ConvergencePolicy.named("minimal-downtime", memoryMiB: 256)!)
        #expect(p.converges)
        #expect(p.totalMs > 400 && p.totalMs < 1200)
    }

    @Test func dirtierThanTheLink() {
        let input = PriceInput(memoryBytes: 256 * MiB, dataBytes: 200 * MiB, dirtyRate: 40 * MiB, bandwidth: 8 * MiB, workingSetBytes: 64 * MiB)
        #expect(Pricing.price(input, policy: ConvergencePolicy.named("minimal-downtime", memoryMiB: 256)!).outcome == "abort")
        let post = Pricing.price(input, policy: ConvergencePolicy.named("post-copy", memoryMiB: 256)!)
        #expect(post.outcome == "post-copy" && !post.converges)
        #expect(post.totalMs < 60_000)
        let suspend = Pricing.price(input, policy: ConvergencePolicy.named("suspend-if-needed", memoryMiB: 256)!)
        #expect(suspend.outcome == "suspend" && suspend.downtimeMs >= 7_000)
        let auto = Pricing.price(input, policy: ConvergencePolicy.named("auto-converge", memoryMiB: 256)!)
        #expect(auto.outcome == "auto-converge" || auto.outcome == "abort")
    }
}

@Suite struct CompatibilityChecks {
    let facts = Compatibility.HostFacts(cpuModels: ["qemu64", "Nehalem"], hostCPUModel: "EPYC", networks: ["br0"], accelerator: "tcg")

    func cluster() -> ClusterState {
        var h1 = PlacementHost(name: "h1", site: "a", vcpuCapacity: 8, memoryCapacityMiB: 4096, cpuMHzCapacity: 8000)
        var h2 = PlacementHost(name: "h2", site: "a", vcpuCapacity: 8, memoryCapacityMiB: 1024, cpuMHzCapacity: 8000)
        let h3 = PlacementHost(name: "h3", site: "b", state: .maintenance, vcpuCapacity: 8, memoryCapacityMiB: 4096, cpuMHzCapacity: 8000)
        h1.add(PlacementVM(name: "web1", cpus: 1, memoryMiB: 512))
        h2.add(PlacementVM(name: "db1", cpus: 1, memoryMiB: 768))
        return ClusterState(hosts: [h1, h2, h3])
    }

    @Test func reasonsAreNamed() {
        var state = cluster()
        let web = PlacementVM(name: "web1", cpus: 1, memoryMiB: 512, site: "a", antiAffinity: ["db1"])
        state.noteConstraints(web)
        var spec = VMSpec(name: "web1", cpus: 1, memoryMiB: 512, cpuModel: "Skylake")
        spec.nics = [VMSpec.NIC(bridge: "br9")]
        let problems = Compatibility.check(
            vm: web, spec: spec, state: state, source: "h1", destination: "h2", sourceFacts: facts, destinationFacts: facts)
        #expect(Set(problems.map(\.check)) == ["capacity", "antiAffinity", "cpu", "network"])
        let toH3 = Compatibility.check(
            vm: web, spec: spec, state: state, source: "h1", destination: "h3", sourceFacts: facts, destinationFacts: facts)
        #expect(toH3.contains { $0.check == "hostState" } && toH3.contains { $0.check == "site" })
        #expect(Compatibility.check(vm: web, spec: spec, state: state, source: "h1", destination: "h1", sourceFacts: facts, destinationFacts: facts).map(\.check) == ["host"])
    }

    @Test func compatibleMoveHasNoProblems() {
        var state = cluster()
        state.hosts[0].remove(PlacementVM(name: "web1", cpus: 1, memoryMiB: 512))
        let vm = PlacementVM(name: "web1", cpus: 1, memoryMiB: 128)
        state.commit(vm, to: 0)
        var spec = VMSpec(name: "web1", cpus: 1, memoryMiB: 128, cpuModel: "qemu64")
        spec.nics = [VMSpec.NIC(bridge: "br0")]
        #expect(Compatibility.check(vm: vm, spec: spec, state: state, source: "h1", destination: "h2", sourceFacts: facts, destinationFacts: facts).isEmpty)
        spec.cpuModel = "host-passthrough"
        var other = facts
        other.hostCPUModel = "Xeon"
        #expect(Compatibility.check(vm: vm, spec: spec, state: state, source: "h1", destination: "h2", sourceFacts: facts, destinationFacts: other).map(\.check) == ["cpu"])
    }
}
