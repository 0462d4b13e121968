import ClusterModel

/// `PUT /v1/resource-pools`: every resource pool of the cluster as this host enforces it (the
/// controller's per-host division of each pool's reservation, limit and shares).
public struct PoolSettingsRequest: Codable, Sendable, Equatable {
    public var pools: [HostPoolSetting]
    public init(pools: [HostPoolSetting]) { self.pools = pools }
}

/// A pool's cgroup partition on this host, read back from the kernel's files.
public struct PoolPartition: Codable, Sendable, Equatable {
    public var name: String
    /// libvirt's partition (`<resource><partition>`), e.g. `/machine/gold/silver`.
    public var partition: String
    /// The partition's directory relative to each cgroup hierarchy's root, e.g. `machine/gold.partition`.
    public var directory: String
    /// What the controller asked for.
    public var setting: HostPoolSetting?
    /// Read back: `cpu.shares` (v1) or the weight behind `cpu.weight` (v2).
    public var cpuShares: Int?
    public var cpuPeriodMicros: Int?
    /// nil: no quota (`-1` / `max`).
    public var cpuQuotaMicros: Int?
    /// nil: unlimited.
    public var memoryLimitBytes: Int64?
    /// `memory.soft_limit_in_bytes` (v1) or `memory.low` (v2).
    public var memoryReservationBytes: Int64?
    /// Domains (libvirt's per-VM cgroups) directly in this partition.
    public var domains: [String]
    /// What could not be applied (e.g. a memory limit below what the pool's guests use).
    public var errors: [String]

    public init(
        name: String, partition: String, directory: String, setting: HostPoolSetting?, cpuShares: Int?, cpuPeriodMicros: Int?,
        cpuQuotaMicros: Int?, memoryLimitBytes: Int64?, memoryReservationBytes: Int64?, domains: [String], errors: [String]
    ) {
        self.name = name
        self.partition = partition
        self.directory = directory
        self.setting = setting
        self.cpuShares = cpuShares
        self.cpuPeriodMicros = cpuPeriodMicros
        self.cpuQuotaMicros = cpuQuotaMicros
        self.memoryLimitBytes = memoryLimitBytes
        self.memoryReservationBytes = memoryReservationBytes
        self.domains = domains
        self.errors = errors
    }
}

/// `GET/PUT /v1/revoked-certificates`: serial numbers (lowercase hexadecimal) of cluster certificates
/// the agent refuses in the TLS handshake although they verify; the controller pushes its list.
public struct RevokedCertificates: Codable, Sendable, Equatable {
    public var serials: [String]
    public init(serials: [String]) { self.serials = serials }
}
