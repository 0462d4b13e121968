/// `PUT /v1/storage-pools`: the cluster's storage pools this host should see. The agent defines,
/// builds, starts and autostarts each in libvirt; pools it is not given are left alone (storage is
/// never removed by omission).
public struct StoragePoolsRequest: Codable, Sendable, Equatable {
    public var pools: [StoragePoolSetting]
    public init(pools: [StoragePoolSetting]) { self.pools = pools }
}

/// One storage pool as a host realizes it.
public struct StoragePoolSetting: Codable, Sendable, Equatable {
    public var name: String
    /// `dir` (a directory of this host), `shared` (a directory every host of the site mounts: NFS or a
    /// cluster file system), `logical` (an LVM volume group) or `rbd` (Ceph).
    public var type: String
    /// `dir` and `shared`: the directory.
    public var path: String?
    /// `logical`: the volume group.
    public var volumeGroup: String?
    /// `rbd`: the Ceph pool, monitors (host or host:port), user and libvirt secret UUID of its key.
    public var rbd: RBDSource?
    public init(name: String, type: String, path: String? = nil, volumeGroup: String? = nil, rbd: RBDSource? = nil) {
        self.name = name
        self.type = type
        self.path = path
        self.volumeGroup = volumeGroup
        self.rbd = rbd
    }
}

public struct RBDSource: Codable, Sendable, Equatable {
    public var pool: String
    public var monitors: [String]
    public var user: String?
    public var secretUUID: String?
    public init(pool: String, monitors: [String], user: String? = nil, secretUUID: String? = nil) {
        self.pool = pool
        self.monitors = monitors
        self.user = user
        self.secretUUID = secretUUID
    }
}

/// A storage pool on this host, as libvirt reports it.
public struct StoragePoolStatus: Codable, Sendable, Equatable {
    public var name: String
    public var type: String
    public var path: String?
    public var active: Bool
    public var capacityBytes: UInt64
    public var allocationBytes: UInt64
    public var availableBytes: UInt64
    public var volumes: Int
    /// Why the pool is not usable here (its directory or volume group is missing, libvirt refused it).
    public var error: String?
    public init(name: String, type: String, path: String?, active: Bool, capacityBytes: UInt64, allocationBytes: UInt64,
                availableBytes: UInt64, volumes: Int, error: String?) {
        self.name = name
        self.type = type
        self.path = path
        self.active = active
        self.capacityBytes = capacityBytes
        self.allocationBytes = allocationBytes
        self.availableBytes = availableBytes
        self.volumes = volumes
        self.error = error
    }
}

/// `PUT /v1/storage-pools/{pool}/volumes/{name}`: a new volume (idempotent: an existing volume of that
/// name is returned as it is).
public struct VolumeRequest: Codable, Sendable, Equatable {
    /// Size; for a clone at least the source's (and the source's size when absent).
    public var sizeGiB: Int?
    /// `qcow2` (default) or `raw`.
    public var format: String?
    /// A template: an absolute image path on this host, or `POOL/VOLUME`.
    public var from: String?
    /// With `from`: `linked` (default: a qcow2 overlay whose backing file is the template) or `full`
    /// (an independent copy).
    public var clone: String?
    public init(sizeGiB: Int? = nil, format: String? = nil, from: String? = nil, clone: String? = nil) {
        self.sizeGiB = sizeGiB
        self.format = format
        self.from = from
        self.clone = clone
    }
}

/// `POST /v1/storage-pools/{pool}/volumes/{name}/resize`.
public struct VolumeResize: Codable, Sendable, Equatable {
    public var sizeGiB: Int
    public init(sizeGiB: Int) { self.sizeGiB = sizeGiB }
}

public struct VolumeStatus: Codable, Sendable, Equatable {
    public var pool: String
    public var name: String
    public var path: String
    public var format: String?
    public var capacityBytes: UInt64
    public var allocationBytes: UInt64
    /// The image this one is a linked clone of.
    public var backing: String?
    /// Domains of this host whose disks use it.
    public var usedBy: [String]
    public init(pool: String, name: String, path: String, format: String?, capacityBytes: UInt64, allocationBytes: UInt64, backing: String?, usedBy: [String]) {
        self.pool = pool
        self.name = name
        self.path = path
        self.format = format
        self.capacityBytes = capacityBytes
        self.allocationBytes = allocationBytes
        self.backing = backing
        self.usedBy = usedBy
    }
}

/// `POST /v1/vms/{name}/move-disk`: storage vMotion of one disk of a running VM into a pool of this
/// host (libvirt block copy, then a pivot), without stopping the guest.
public struct DiskMoveRequest: Codable, Sendable, Equatable {
    /// The disk's target (`vda`...).
    public var target: String
    /// The pool the disk moves to, and the volume's name there.
    public var pool: String
    public var volume: String
    /// Copy bandwidth limit (MiB/s); none by default.
    public var bandwidthMiBps: Int?
    public init(target: String, pool: String, volume: String, bandwidthMiBps: Int? = nil) {
        self.target = target
        self.pool = pool
        self.volume = volume
        self.bandwidthMiBps = bandwidthMiBps
    }
}

/// A disk move as it goes: `copying` (bytes so far of the whole), `pivoting`, `completed`, `failed`.
public struct DiskMoveStatus: Codable, Sendable, Equatable {
    public var vm: String
    public var target: String
    public var source: String
    public var destination: String
    public var state: String
    public var copiedBytes: UInt64
    public var totalBytes: UInt64
    public var error: String?
    public var startedMs: Int64
    public var endedMs: Int64?
    public init(vm: String, target: String, source: String, destination: String, state: String, copiedBytes: UInt64, totalBytes: UInt64,
                error: String?, startedMs: Int64, endedMs: Int64?) {
        self.vm = vm
        self.target = target
        self.source = source
        self.destination = destination
        self.state = state
        self.copiedBytes = copiedBytes
        self.totalBytes = totalBytes
        self.error = error
        self.startedMs = startedMs
        self.endedMs = endedMs
    }
}

/// `POST /v1/storage-pools/{pool}/volumes/{volume}/snapshots`: an internal qcow2 snapshot of a volume
/// no running guest has open (a stopped VM's disk, a template, a loose volume).
public struct VolumeSnapshotRequest: Codable, Sendable, Equatable {
    public var name: String
    public init(name: String) { self.name = name }
}

/// A snapshot inside a qcow2 volume, as `qemu-img info` lists it.
public struct VolumeSnapshot: Codable, Sendable, Equatable {
    public var name: String
    public var id: String?
    /// When it was taken (seconds since 1970).
    public var dateSeconds: Int64?
    /// Bytes of guest memory saved with it (0 for a disk snapshot).
    public var vmStateBytes: UInt64?
    public init(name: String, id: String?, dateSeconds: Int64?, vmStateBytes: UInt64?) {
        self.name = name
        self.id = id
        self.dateSeconds = dateSeconds
        self.vmStateBytes = vmStateBytes
    }
}
