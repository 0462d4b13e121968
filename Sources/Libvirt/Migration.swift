import CLibvirt
import FoundationEssentials
import Glibc

/// How a domain migrates: libvirt's flags and typed parameters for `virDomainMigrateToURI3`.
public struct MigrationRequest: Sendable, Equatable {
    /// Peer to peer: the source libvirtd talks to the destination's (`dconnuri`).
    public var peerToPeer = true
    public var live = true
    public var persistOnDestination = true
    public var undefineSource = true
    /// Copy these disks (target names, e.g. `vda`) along: full copy, or only the top image when the
    /// backing chain exists on the destination (`incremental`).
    public var copyDisks: [String] = []
    public var incremental = false
    /// MiB/s; nil for libvirt's default (unlimited).
    public var bandwidthMiBps: UInt64?
    public var autoConverge = false
    public var autoConvergeInitialPercent: Int32?
    public var autoConvergeIncrementPercent: Int32?
    /// Allow a later switch to post-copy.
    public var postCopy = false
    /// Abort when an I/O error occurs on the source during the migration.
    public var abortOnError = true
    /// Skip libvirt's check that disks not copied are on shared storage (VIR_MIGRATE_UNSAFE).
    public var unsafe = false
    /// Encrypt QEMU's migration streams with TLS (VIR_MIGRATE_TLS; certificates in /etc/pki/qemu).
    public var tls = false

    public init() {}

    var flags: UInt32 {
        var f: UInt32 = 0
        func add(_ on: Bool, _ flag: virDomainMigrateFlags) { if on { f |= UInt32(flag.rawValue) } }
        add(live, VIR_MIGRATE_LIVE)
        add(peerToPeer, VIR_MIGRATE_PEER2PEER)
        add(persistOnDestination, VIR_MIGRATE_PERSIST_DEST)
        add(undefineSource, VIR_MIGRATE_UNDEFINE_SOURCE)
        add(!copyDisks.isEmpty && !incremental, VIR_MIGRATE_NON_SHARED_DISK)
        add(!copyDisks.isEmpty && incremental, VIR_MIGRATE_NON_SHARED_INC)
        add(autoConverge, VIR_MIGRATE_AUTO_CONVERGE)
        add(postCopy, VIR_MIGRATE_POSTCOPY)
        add(abortOnError, VIR_MIGRATE_ABORT_ON_ERROR)
        add(unsafe, VIR_MIGRATE_UNSAFE)
        add(tls, VIR_MIGRATE_TLS)
        return f
    }
}

/// A domain job's type, as `virDomainGetJobStats` reports it.
public enum JobType: String, Sendable, Codable {
    case none, bounded, unbounded, completed, failed, cancelled

    init(_ raw: Int32) {
        switch raw {
        case Int32(VIR_DOMAIN_JOB_BOUNDED.rawValue): self = .bounded
        case Int32(VIR_DOMAIN_JOB_UNBOUNDED.rawValue): self = .unbounded
        case Int32(VIR_DOMAIN_JOB_COMPLETED.rawValue): self = .completed
        case Int32(VIR_DOMAIN_JOB_FAILED.rawValue): self = .failed
        case Int32(VIR_DOMAIN_JOB_CANCELLED.rawValue): self = .cancelled
        default: self = .none
        }
    }
}

/// The `operation` field of a job's statistics.
public enum JobOperation {
    public static let migrationIn = Int64(VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN.rawValue)
    public static let migrationOut = Int64(VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT.rawValue)
}

extension Domain {
    /// Migrates the domain to the libvirtd at `destinationURI` (blocks until it ends: run it on the
    /// libvirt pool, and watch it from another thread with `jobStats`).
    public func migrate(to destinationURI: String, _ request: MigrationRequest) throws(LibvirtError) {
        var params: virTypedParameterPtr?
        var n: Int32 = 0
        var max: Int32 = 0
        defer { virTypedParamsFree(params, n) }
        for disk in request.copyDisks {
            _ = virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_MIGRATE_DISKS, disk)
        }
        if let bw = request.bandwidthMiBps { _ = virTypedParamsAddULLong(&params, &n, &max, VIR_MIGRATE_PARAM_BANDWIDTH, bw) }
        if request.autoConverge {
            if let v = request.autoConvergeInitialPercent {
                _ = virTypedParamsAddInt(&params, &n, &max, VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL, v)
            }
            if let v = request.autoConvergeIncrementPercent {
                _ = virTypedParamsAddInt(&params, &n, &max, VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT, v)
            }
        }
        if request.postCopy, let bw = request.bandwidthMiBps {
            _ = virTypedParamsAddULLong(&params, &n, &max, VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY, bw)
        }
        if virDomainMigrateToURI3(ptr, destinationURI, params, UInt32(n), request.flags) < 0 {
            throw LibvirtError.last("cannot migrate \(name) to \(destinationURI)")
        }
    }

    /// The current (or, with `completed`, the last finished) job's statistics.
    public func jobStats(completed: Bool = false) throws(LibvirtError) -> (JobType, [String: TypedValue]) {
        var type: Int32 = 0
        var params: virTypedParameterPtr?
        var n: Int32 = 0
        let flags = completed ? UInt32(VIR_DOMAIN_JOB_STATS_COMPLETED.rawValue | VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED.rawValue) : 0
        if virDomainGetJobStats(ptr, &type, &params, &n, flags) < 0 {
            throw LibvirtError.last("cannot get job statistics of \(name)")
        }
        defer { virTypedParamsFree(params, n) }
        return (JobType(type), TypedValue.decode(params, count: n))
    }

    /// Aborts the running job (a migration: the domain keeps running here).
    public func abortJob() throws(LibvirtError) {
        if virDomainAbortJob(ptr) < 0 { throw LibvirtError.last("cannot abort the job of \(name)") }
    }

    /// The most downtime (ms) QEMU may take to switch a live migration over.
    public func setMigrationMaxDowntime(ms: UInt64) throws(LibvirtError) {
        if virDomainMigrateSetMaxDowntime(ptr, ms, 0) < 0 { throw LibvirtError.last("cannot set the downtime of \(name)") }
    }

    /// Switches a running migration (started with the post-copy flag) to post-copy.
    public func startPostCopy() throws(LibvirtError) {
        if virDomainMigrateStartPostCopy(ptr, 0) < 0 { throw LibvirtError.last("cannot switch \(name) to post-copy") }
    }

    /// Caps a running migration's bandwidth (MiB/s).
    public func setMigrationMaxSpeed(mibps: UInt) throws(LibvirtError) {
        if virDomainMigrateSetMaxSpeed(ptr, mibps, 0) < 0 { throw LibvirtError.last("cannot set the migration speed of \(name)") }
    }

    /// Starts QEMU's dirty-rate measurement (page sampling) over `seconds`; read the result with
    /// `dirtyRate()` once they have passed.
    public func startDirtyRateCalc(seconds: Int32) throws(LibvirtError) {
        if virDomainStartDirtyRateCalc(ptr, seconds, 0) < 0 { throw LibvirtError.last("cannot measure the dirty rate of \(name)") }
    }

    /// The last dirty-rate measurement in MiB/s, nil while it is still running or never ran.
    public func dirtyRate() throws(LibvirtError) -> Int64? {
        var records: UnsafeMutablePointer<virDomainStatsRecordPtr?>?
        var doms: [OpaquePointer?] = [ptr, nil]
        let n = virDomainListGetStats(&doms, UInt32(VIR_DOMAIN_STATS_DIRTYRATE.rawValue), &records, 0)
        if n < 0 { throw LibvirtError.last("cannot read the dirty rate of \(name)") }
        defer { virDomainStatsRecordListFree(records) }
        guard n > 0, let rec = records?[0] else { return nil }
        let stats = TypedValue.decode(rec.pointee.params, count: rec.pointee.nparams)
        // calc_status: 0 unstarted, 1 measuring, 2 measured.
        guard stats["dirtyrate.calc_status"]?.intValue == 2 else { return nil }
        return stats["dirtyrate.megabytes_per_second"]?.intValue
    }

    /// Whether the domain is paused because its migration switched to post-copy (source side).
    public func isInPostCopy() throws(LibvirtError) -> Bool {
        let (state, reason) = try state()
        return state == .paused && reason == Int32(VIR_DOMAIN_PAUSED_POSTCOPY.rawValue)
    }
}

extension Connection {
    /// Domain capabilities for the given virtualization type (`kvm` or `qemu`).
    public func domainCapabilitiesXML(virtType: String) throws(LibvirtError) -> String {
        guard let s = virConnectGetDomainCapabilities(ptr, nil, nil, nil, virtType, 0) else {
            throw LibvirtError.last("cannot get domain capabilities")
        }
        defer { free(s) }
        return String(cString: s)
    }
}
