import CLibvirt
import FoundationEssentials
import Glibc

/// A libvirt typed parameter value (stats, memory and scheduler parameters).
public enum TypedValue: Sendable, Equatable, Codable {
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case bool(Bool)
    case string(String)

    public var intValue: Int64? {
        switch self {
        case .int(let v): return v
        case .uint(let v): return v > UInt64(Int64.max) ? Int64.max : Int64(v)
        case .double(let v): return Int64(v)
        case .bool(let v): return v ? 1 : 0
        case .string: return nil
        }
    }

    public var uintValue: UInt64? {
        if case .uint(let v) = self { return v }
        return intValue.map { UInt64(max(0, $0)) }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .int(let v): try c.encode(v)
        case .uint(let v): try c.encode(v)
        case .double(let v): try c.encode(v)
        case .bool(let v): try c.encode(v)
        case .string(let v): try c.encode(v)
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let v = try? c.decode(Bool.self) { self = .bool(v) }
        else if let v = try? c.decode(Int64.self) { self = .int(v) }
        else if let v = try? c.decode(UInt64.self) { self = .uint(v) }
        else if let v = try? c.decode(Double.self) { self = .double(v) }
        else { self = .string(try c.decode(String.self)) }
    }

    static func decode(_ params: virTypedParameterPtr?, count: Int32) -> [String: TypedValue] {
        guard let params else { return [:] }
        var out: [String: TypedValue] = [:]
        for i in 0..<Int(count) {
            let p = params[i]
            let field = withUnsafeBytes(of: p.field) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            let value: TypedValue
            switch Int32(p.type) {
            case Int32(VIR_TYPED_PARAM_INT.rawValue): value = .int(Int64(p.value.i))
            case Int32(VIR_TYPED_PARAM_UINT.rawValue): value = .uint(UInt64(p.value.ui))
            case Int32(VIR_TYPED_PARAM_LLONG.rawValue): value = .int(p.value.l)
            case Int32(VIR_TYPED_PARAM_ULLONG.rawValue): value = .uint(p.value.ul)
            case Int32(VIR_TYPED_PARAM_DOUBLE.rawValue): value = .double(p.value.d)
            case Int32(VIR_TYPED_PARAM_BOOLEAN.rawValue): value = .bool(p.value.b != 0)
            case Int32(VIR_TYPED_PARAM_STRING.rawValue): value = .string(p.value.s.map { String(cString: $0) } ?? "")
            default: continue
            }
            out[field] = value
        }
        return out
    }
}

/// Domain states as libvirt reports them.
public enum DomainState: String, Sendable, Codable {
    case nostate, running, blocked, paused, shutdown, shutoff, crashed, pmsuspended

    init(_ raw: Int32) {
        switch raw {
        case Int32(VIR_DOMAIN_RUNNING.rawValue): self = .running
        case Int32(VIR_DOMAIN_BLOCKED.rawValue): self = .blocked
        case Int32(VIR_DOMAIN_PAUSED.rawValue): self = .paused
        case Int32(VIR_DOMAIN_SHUTDOWN.rawValue): self = .shutdown
        case Int32(VIR_DOMAIN_SHUTOFF.rawValue): self = .shutoff
        case Int32(VIR_DOMAIN_CRASHED.rawValue): self = .crashed
        case Int32(VIR_DOMAIN_PMSUSPENDED.rawValue): self = .pmsuspended
        default: self = .nostate
        }
    }

    /// Whether a QEMU process exists for the domain.
    public var isActive: Bool { self != .shutoff && self != .crashed && self != .nostate }
}

public struct DomainInfo: Sendable, Equatable, Codable {
    public var state: DomainState
    public var maxMemoryKiB: UInt64
    public var memoryKiB: UInt64
    public var vcpus: Int
    public var cpuTimeNs: UInt64
}

/// One reference to a libvirt domain, freed on release. Domain handles are thread-safe in libvirt.
public final class Domain: @unchecked Sendable {
    let ptr: OpaquePointer

    init(_ ptr: OpaquePointer) { self.ptr = ptr }
    deinit { virDomainFree(ptr) }

    public var name: String { String(cString: virDomainGetName(ptr)) }

    public var uuid: String {
        var buf = [CChar](repeating: 0, count: Int(VIR_UUID_STRING_BUFLEN))
        _ = virDomainGetUUIDString(ptr, &buf)
        return String(cString: buf)
    }

    /// The running domain's ID, nil when it is not running.
    public var id: UInt32? {
        let id = virDomainGetID(ptr)
        return id == UInt32.max ? nil : id
    }

    public func state() throws(LibvirtError) -> (DomainState, reason: Int32) {
        var state: Int32 = 0
        var reason: Int32 = 0
        if virDomainGetState(ptr, &state, &reason, 0) < 0 { throw LibvirtError.last("cannot get state of \(name)") }
        return (DomainState(state), reason)
    }

    public func info() throws(LibvirtError) -> DomainInfo {
        var info = virDomainInfo()
        if virDomainGetInfo(ptr, &info) < 0 { throw LibvirtError.last("cannot get info of \(name)") }
        return DomainInfo(
            state: DomainState(Int32(info.state)), maxMemoryKiB: UInt64(info.maxMem), memoryKiB: UInt64(info.memory),
            vcpus: Int(info.nrVirtCpu), cpuTimeNs: UInt64(info.cpuTime))
    }

    public func isPersistent() -> Bool { virDomainIsPersistent(ptr) == 1 }

    /// The domain XML; `inactive` gives the persistent definition rather than the live one.
    public func xml(inactive: Bool = false) throws(LibvirtError) -> String {
        let flags = inactive ? UInt32(VIR_DOMAIN_XML_INACTIVE.rawValue) : 0
        guard let s = virDomainGetXMLDesc(ptr, flags) else { throw LibvirtError.last("cannot get XML of \(name)") }
        defer { free(s) }
        return String(cString: s)
    }

    /// Starts copying `disk` (its target, e.g. `vda`) of a running domain into the image described by
    /// `destinationXML` (a `<disk>` element), which exists already (`VIR_DOMAIN_BLOCK_COPY_REUSE_EXT`,
    /// made by the caller at the right size). The whole chain is copied: the copy stands alone. The job
    /// mirrors new writes once it has caught up; `blockJobAbort(pivot: true)` then switches to the copy.
    public func blockCopy(disk: String, destinationXML: String, bandwidthBytesPerSecond: UInt64? = nil) throws(LibvirtError) {
        var params: virTypedParameterPtr? = nil
        var n: Int32 = 0
        var max: Int32 = 0
        defer { virTypedParamsFree(params, n) }
        if let bw = bandwidthBytesPerSecond {
            _ = virTypedParamsAddULLong(&params, &n, &max, VIR_DOMAIN_BLOCK_COPY_BANDWIDTH, bw)
        }
        // TRANSIENT_JOB: libvirt refuses a copy of a persistent domain otherwise (the job would not
        // survive a managed save); the persistent definition is the caller's to update after the pivot.
        let flags = UInt32(VIR_DOMAIN_BLOCK_COPY_REUSE_EXT.rawValue | VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB.rawValue)
        if virDomainBlockCopy(ptr, disk, destinationXML, params, n, flags) < 0 {
            throw LibvirtError.last("cannot start copying disk \(disk) of \(name)")
        }
    }

    public struct BlockJob: Sendable, Equatable {
        public var type: Int32
        public var current: UInt64
        public var end: UInt64
        /// Caught up: the copy mirrors every new write; a pivot may happen.
        public var ready: Bool { end > 0 && current == end }
    }

    /// The running block job on `disk`, if any.
    public func blockJob(disk: String) throws(LibvirtError) -> BlockJob? {
        var info = virDomainBlockJobInfo()
        let rc = virDomainGetBlockJobInfo(ptr, disk, &info, 0)
        if rc < 0 { throw LibvirtError.last("cannot read the block job of \(name)'s \(disk)") }
        if rc == 0 { return nil }
        return BlockJob(type: info.type, current: UInt64(info.cur), end: UInt64(info.end))
    }

    /// Ends the block job on `disk`: with `pivot`, the domain switches to the copy (synchronously).
    public func blockJobAbort(disk: String, pivot: Bool) throws(LibvirtError) {
        let flags = pivot ? UInt32(VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT.rawValue) : 0
        if virDomainBlockJobAbort(ptr, disk, flags) < 0 {
            throw LibvirtError.last(pivot ? "cannot pivot \(name)'s \(disk) to its copy" : "cannot cancel the block job of \(name)'s \(disk)")
        }
    }

    public func start() throws(LibvirtError) {
        if virDomainCreate(ptr) < 0 { throw LibvirtError.last("cannot start \(name)") }
    }

    /// Asks the guest to shut down: QEMU presses the ACPI power button (or asks the guest agent when
    /// one is configured).
    public func shutdown() throws(LibvirtError) {
        if virDomainShutdown(ptr) < 0 {
            throw LibvirtError.last("cannot shut down \(name)")
        }
    }

    /// Stops the domain at once (power off).
    public func destroy() throws(LibvirtError) {
        if virDomainDestroy(ptr) < 0 { throw LibvirtError.last("cannot destroy \(name)") }
    }

    public func reboot() throws(LibvirtError) {
        if virDomainReboot(ptr, 0) < 0 {
            throw LibvirtError.last("cannot reboot \(name)")
        }
    }

    public func suspend() throws(LibvirtError) {
        if virDomainSuspend(ptr) < 0 { throw LibvirtError.last("cannot suspend \(name)") }
    }

    public func resume() throws(LibvirtError) {
        if virDomainResume(ptr) < 0 { throw LibvirtError.last("cannot resume \(name)") }
    }

    /// Removes the persistent definition (and managed save image, snapshot metadata, NVRAM).
    public func undefine() throws(LibvirtError) {
        let flags = UInt32(VIR_DOMAIN_UNDEFINE_MANAGED_SAVE.rawValue | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA.rawValue
            | VIR_DOMAIN_UNDEFINE_NVRAM.rawValue)
        if virDomainUndefineFlags(ptr, flags) == 0 { return }
        let error = LibvirtError.last("cannot undefine \(name)")
        // Drivers without NVRAM or managed save (the test driver) refuse the flags; plain undefine is
        // then the same thing.
        guard error.code == .invalid, error.message.contains("unsupported flags") else { throw error }
        if virDomainUndefine(ptr) < 0 { throw LibvirtError.last("cannot undefine \(name)") }
    }

    /// Sets memory cgroup limits (KiB); `live` affects the running domain, `config` the definition.
    /// libvirt's CPU map: one bit per host CPU, `hostCPUs` bits long.
    static func cpumap(_ cpus: [Int], hostCPUs: Int) -> [UInt8] {
        var map = [UInt8](repeating: 0, count: max(1, (hostCPUs + 7) / 8))
        for c in cpus where c >= 0 && c < hostCPUs { map[c / 8] |= 1 << UInt8(c % 8) }
        return map
    }

    /// Pins every vCPU and the emulator threads of the running domain onto `cpus` (live only: a restart
    /// starts from the definition's CPU set again).
    public func pin(to cpus: [Int], hostCPUs: Int) throws(LibvirtError) {
        var map = Self.cpumap(cpus, hostCPUs: hostCPUs)
        let vcpus = try info().vcpus
        let live = UInt32(VIR_DOMAIN_AFFECT_LIVE.rawValue)
        for v in 0..<vcpus {
            if virDomainPinVcpuFlags(ptr, UInt32(v), &map, Int32(map.count), live) < 0 {
                throw LibvirtError.last("cannot pin vCPU \(v) of \(name)")
            }
        }
        if virDomainPinEmulator(ptr, &map, Int32(map.count), live) < 0 {
            throw LibvirtError.last("cannot pin the emulator threads of \(name)")
        }
    }

    /// The host CPUs each vCPU may run on now.
    public func vcpuPinning(hostCPUs: Int) throws(LibvirtError) -> [[Int]] {
        let vcpus = Int(try info().vcpus)
        let len = max(1, (hostCPUs + 7) / 8)
        var maps = [UInt8](repeating: 0, count: len * vcpus)
        let n = virDomainGetVcpuPinInfo(ptr, Int32(vcpus), &maps, Int32(len), UInt32(VIR_DOMAIN_AFFECT_LIVE.rawValue))
        if n < 0 { throw LibvirtError.last("cannot read the vCPU pinning of \(name)") }
        return (0..<Int(n)).map { v in (0..<hostCPUs).filter { c in maps[v * len + c / 8] & (1 << UInt8(c % 8)) != 0 } }
    }

    public func setMemoryParameters(hardLimitKiB: UInt64? = nil, softLimitKiB: UInt64? = nil, live: Bool, config: Bool) throws(LibvirtError) {
        var params: virTypedParameterPtr?
        var n: Int32 = 0
        var max: Int32 = 0
        defer { virTypedParamsFree(params, n) }
        if let hardLimitKiB { _ = virTypedParamsAddULLong(&params, &n, &max, VIR_DOMAIN_MEMORY_HARD_LIMIT, hardLimitKiB) }
        if let softLimitKiB { _ = virTypedParamsAddULLong(&params, &n, &max, VIR_DOMAIN_MEMORY_SOFT_LIMIT, softLimitKiB) }
        guard n > 0 else { return }
        var flags: UInt32 = 0
        if live { flags |= UInt32(VIR_DOMAIN_AFFECT_LIVE.rawValue) }
        if config { flags |= UInt32(VIR_DOMAIN_AFFECT_CONFIG.rawValue) }
        if virDomainSetMemoryParameters(ptr, params, n, flags) < 0 {
            throw LibvirtError.last("cannot set memory parameters of \(name)")
        }
    }

    /// memtune as libvirt reports it (KiB; unlimited is a very large number).
    public func memoryParameters(live: Bool = true) throws(LibvirtError) -> [String: TypedValue] {
        let flags = UInt32(live ? VIR_DOMAIN_AFFECT_LIVE.rawValue : VIR_DOMAIN_AFFECT_CONFIG.rawValue)
        var n: Int32 = 0
        if virDomainGetMemoryParameters(ptr, nil, &n, flags) < 0 { throw LibvirtError.last("cannot get memory parameters of \(name)") }
        var params = [virTypedParameter](repeating: virTypedParameter(), count: Int(n))
        if virDomainGetMemoryParameters(ptr, &params, &n, flags) < 0 {
            throw LibvirtError.last("cannot get memory parameters of \(name)")
        }
        return params.withUnsafeMutableBufferPointer { TypedValue.decode($0.baseAddress, count: n) }
    }

    /// cputune as libvirt reports it (cpu_shares, global_period, global_quota, vcpu_period, ...).
    public func schedulerParameters(live: Bool = true) throws(LibvirtError) -> [String: TypedValue] {
        let flags = UInt32(live ? VIR_DOMAIN_AFFECT_LIVE.rawValue : VIR_DOMAIN_AFFECT_CONFIG.rawValue)
        var n: Int32 = 0
        guard let type = virDomainGetSchedulerType(ptr, &n) else {
            throw LibvirtError.last("cannot get scheduler type of \(name)")
        }
        free(type)
        var params = [virTypedParameter](repeating: virTypedParameter(), count: Int(n))
        if virDomainGetSchedulerParametersFlags(ptr, &params, &n, flags) < 0 {
            throw LibvirtError.last("cannot get scheduler parameters of \(name)")
        }
        return params.withUnsafeMutableBufferPointer { TypedValue.decode($0.baseAddress, count: n) }
    }
}
