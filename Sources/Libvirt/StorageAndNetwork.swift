import CLibvirt
import FoundationEssentials
import Glibc

public struct PoolInfo: Sendable, Equatable, Codable {
    public var active: Bool
    public var capacityBytes: UInt64
    public var allocationBytes: UInt64
    public var availableBytes: UInt64
}

/// A libvirt storage pool (basic calls; pooled storage builds on them).
public final class StoragePool: @unchecked Sendable {
    let ptr: OpaquePointer
    init(_ ptr: OpaquePointer) { self.ptr = ptr }
    deinit { virStoragePoolFree(ptr) }

    public var name: String { String(cString: virStoragePoolGetName(ptr)) }

    /// Builds the pool's target (e.g. creates a dir pool's directory).
    public func build() throws(LibvirtError) {
        if virStoragePoolBuild(ptr, 0) < 0 { throw LibvirtError.last("cannot build pool \(name)") }
    }

    public func start() throws(LibvirtError) {
        if virStoragePoolCreate(ptr, 0) < 0 { throw LibvirtError.last("cannot start pool \(name)") }
    }

    public func stop() throws(LibvirtError) {
        if virStoragePoolDestroy(ptr) < 0 { throw LibvirtError.last("cannot stop pool \(name)") }
    }

    public func undefine() throws(LibvirtError) {
        if virStoragePoolUndefine(ptr) < 0 { throw LibvirtError.last("cannot undefine pool \(name)") }
    }

    public func setAutostart(_ on: Bool) throws(LibvirtError) {
        if virStoragePoolSetAutostart(ptr, on ? 1 : 0) < 0 { throw LibvirtError.last("cannot set autostart of pool \(name)") }
    }

    public func refresh() throws(LibvirtError) {
        if virStoragePoolRefresh(ptr, 0) < 0 { throw LibvirtError.last("cannot refresh pool \(name)") }
    }

    public func info() throws(LibvirtError) -> PoolInfo {
        var i = virStoragePoolInfo()
        if virStoragePoolGetInfo(ptr, &i) < 0 { throw LibvirtError.last("cannot get info of pool \(name)") }
        return PoolInfo(
            active: Int32(i.state) == Int32(VIR_STORAGE_POOL_RUNNING.rawValue), capacityBytes: UInt64(i.capacity),
            allocationBytes: UInt64(i.allocation), availableBytes: UInt64(i.available))
    }

    public func xml() throws(LibvirtError) -> String {
        guard let s = virStoragePoolGetXMLDesc(ptr, 0) else { throw LibvirtError.last("cannot get XML of pool \(name)") }
        defer { free(s) }
        return String(cString: s)
    }

    public var autostart: Bool {
        var on: Int32 = 0
        return virStoragePoolGetAutostart(ptr, &on) == 0 && on == 1
    }

    /// A full copy of `source` (any pool of the same connection) as a new volume (`virStorageVolCreateXMLFrom`).
    public func createVolume(xml: String, copying source: StorageVolume) throws(LibvirtError) -> StorageVolume {
        guard let v = virStorageVolCreateXMLFrom(ptr, xml, source.ptr, 0) else { throw LibvirtError.last("cannot copy \(source.name) into pool \(name)") }
        return StorageVolume(v)
    }

    public func createVolume(xml: String) throws(LibvirtError) -> StorageVolume {
        guard let v = virStorageVolCreateXML(ptr, xml, 0) else { throw LibvirtError.last("cannot create volume in pool \(name)") }
        return StorageVolume(v)
    }

    public func volume(named volume: String) throws(LibvirtError) -> StorageVolume {
        guard let v = virStorageVolLookupByName(ptr, volume) else {
            throw LibvirtError.last("volume \(volume) not found in pool \(name)")
        }
        return StorageVolume(v)
    }

    public func volumes() throws(LibvirtError) -> [StorageVolume] {
        var list: UnsafeMutablePointer<OpaquePointer?>?
        let n = virStoragePoolListAllVolumes(ptr, &list, 0)
        if n < 0 { throw LibvirtError.last("cannot list volumes of pool \(name)") }
        defer { free(list) }
        return (0..<Int(n)).compactMap { list?[$0].map(StorageVolume.init) }
    }
}

public final class StorageVolume: @unchecked Sendable {
    let ptr: OpaquePointer
    init(_ ptr: OpaquePointer) { self.ptr = ptr }
    deinit { virStorageVolFree(ptr) }

    public var name: String { String(cString: virStorageVolGetName(ptr)) }

    public func path() throws(LibvirtError) -> String {
        guard let s = virStorageVolGetPath(ptr) else { throw LibvirtError.last("cannot get path of volume \(name)") }
        defer { free(s) }
        return String(cString: s)
    }

    /// (capacity, allocation) in bytes.
    public func sizes() throws(LibvirtError) -> (capacity: UInt64, allocation: UInt64) {
        var i = virStorageVolInfo()
        if virStorageVolGetInfo(ptr, &i) < 0 { throw LibvirtError.last("cannot get info of volume \(name)") }
        return (UInt64(i.capacity), UInt64(i.allocation))
    }

    public func delete() throws(LibvirtError) {
        if virStorageVolDelete(ptr, 0) < 0 { throw LibvirtError.last("cannot delete volume \(name)") }
    }

    public func xml() throws(LibvirtError) -> String {
        guard let s = virStorageVolGetXMLDesc(ptr, 0) else { throw LibvirtError.last("cannot get XML of volume \(name)") }
        defer { free(s) }
        return String(cString: s)
    }

    /// Grows the volume to `bytes` (never shrinks: VIR_STORAGE_VOL_RESIZE_SHRINK is not passed).
    public func resize(bytes: UInt64) throws(LibvirtError) {
        if virStorageVolResize(ptr, bytes, 0) < 0 { throw LibvirtError.last("cannot resize volume \(name)") }
    }
}

/// A libvirt virtual network (basic calls; the distributed switch builds on them).
public final class Network: @unchecked Sendable {
    let ptr: OpaquePointer
    init(_ ptr: OpaquePointer) { self.ptr = ptr }
    deinit { virNetworkFree(ptr) }

    public var name: String { String(cString: virNetworkGetName(ptr)) }
    public var isActive: Bool { virNetworkIsActive(ptr) == 1 }

    public func bridgeName() throws(LibvirtError) -> String {
        guard let s = virNetworkGetBridgeName(ptr) else { throw LibvirtError.last("cannot get bridge of network \(name)") }
        defer { free(s) }
        return String(cString: s)
    }

    public func start() throws(LibvirtError) {
        if virNetworkCreate(ptr) < 0 { throw LibvirtError.last("cannot start network \(name)") }
    }

    public func stop() throws(LibvirtError) {
        if virNetworkDestroy(ptr) < 0 { throw LibvirtError.last("cannot stop network \(name)") }
    }

    public func undefine() throws(LibvirtError) {
        if virNetworkUndefine(ptr) < 0 { throw LibvirtError.last("cannot undefine network \(name)") }
    }
}
