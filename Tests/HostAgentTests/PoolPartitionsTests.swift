import ClusterModel
import Foundation
import Glibc
import Testing

@testable import HostAgent

/// Resource-pool partitions on each cgroup layout, from mountinfo recorded on such hosts whose mounts
/// are moved into a scratch directory (cgroupfs itself cannot be mounted by a test; the integration
/// tests cover v1 on the testbed and hybrid on this machine's own libvirtd through `make demo`).
@Suite final class PoolPartitionsTests {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("cgroups-\(getpid())-\(UInt64.random(in: 0...UInt64.max))").path

    deinit { try? FileManager.default.removeItem(atPath: root) }

    /// Debian 11 / systemd's hybrid default, and this machine (no systemd, v1 controllers + unified).
    static let hybrid = """
        24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
        31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
        32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
        33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
        34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
        36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
        40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
        """
    /// The testbed's hosts: v1 only.
    static let v1 = """
        31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
        32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
        34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
        """
    /// Debian 12: the unified hierarchy alone, carrying the controllers.
    static let v2 = """
        25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
        30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
        """

    /// The recorded mountinfo with its cgroup mounts under the scratch root, each made as a directory
    /// (with cgroup.controllers for a unified one).
    func layout(_ recorded: String, unifiedControllers: String = "") throws -> PoolPartitions {
        let text = recorded.replacingOccurrences(of: " /sys/fs/cgroup", with: " \(root)/sys/fs/cgroup")
        for h in PoolPartitions.hierarchies(mountinfo: text, read: { _ in nil }) {
            try FileManager.default.createDirectory(atPath: h.mount, withIntermediateDirectories: true)
            if h.v2 {
                try unifiedControllers.write(toFile: "\(h.mount)/cgroup.controllers", atomically: false, encoding: .utf8)
                try "".write(toFile: "\(h.mount)/cgroup.subtree_control", atomically: false, encoding: .utf8)
            }
        }
        return PoolPartitions(mountinfo: { text }, systemd: { false })
    }

    func exists(_ path: String) -> Bool {
        var isDir = false
        return FileManager.default.fileExists(atPath: "\(root)/sys/fs/cgroup/\(path)", isDirectory: &isDir) && isDir
    }

    @Test func recognisesEachLayout() throws {
        let none: (String) -> String? = { _ in nil }
        let hybrid = PoolPartitions.hierarchies(mountinfo: Self.hybrid, read: none)
        #expect(hybrid.map(\.mount) == ["cpu", "cpuacct", "cpuset", "memory", "devices", "systemd", "unified"].map { "/sys/fs/cgroup/\($0)" })
        #expect(hybrid.last == .init(mount: "/sys/fs/cgroup/unified", controllers: [], v2: true))
        #expect(hybrid.first { $0.controllers.contains("name=systemd") }?.mount == "/sys/fs/cgroup/systemd")
        let v1 = PoolPartitions.hierarchies(mountinfo: Self.v1, read: none)
        #expect(v1.map(\.controllers) == [["cpu", "cpuacct"], ["cpuset"], ["memory"]])
        let v2 = PoolPartitions.hierarchies(mountinfo: Self.v2) { $0 == "/sys/fs/cgroup/cgroup.controllers" ? "cpuset cpu io memory hugetlb pids rdma misc\n" : nil }
        #expect(v2 == [.init(mount: "/sys/fs/cgroup", controllers: ["cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"], v2: true)])
        // Escaped mount points (a space is \040 in mountinfo).
        let odd = PoolPartitions.hierarchies(mountinfo: "1 2 0:1 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw", read: none)
        #expect(odd.map(\.mount) == ["/mnt/my cg"])
    }

    /// The defect `make demo` hit on this machine: the partition must exist in the unified hierarchy too.
    @Test func hybridMakesPartitionsInTheUnifiedHierarchyToo() throws {
        let pools = try layout(Self.hybrid)
        try pools.ensure(["gold", "silver"])
        for h in ["cpu", "cpuacct", "cpuset", "memory", "devices", "systemd", "unified"] {
            #expect(exists("\(h)/machine/gold.partition/silver.partition"), "\(h)")
        }
        // A controller-less unified hierarchy gets no controllers enabled.
        #expect(try String(contentsOfFile: "\(root)/sys/fs/cgroup/unified/cgroup.subtree_control", encoding: .utf8) == "")
    }

    @Test func v1MakesPartitionsInEachController() throws {
        let pools = try layout(Self.v1)
        try pools.ensure(["default"])
        #expect(exists("cpu,cpuacct/machine/default.partition") && exists("cpuset/machine/default.partition") && exists("memory/machine/default.partition"))
        #expect(!exists("unified"))
    }

    @Test func v2EnablesTheControllersAboveEachPartition() throws {
        let pools = try layout(Self.v2, unifiedControllers: "cpuset cpu io memory pids\n")
        try pools.ensure(["gold"])
        #expect(exists("machine/gold.partition"))
        #expect(try String(contentsOfFile: "\(root)/sys/fs/cgroup/cgroup.subtree_control", encoding: .utf8) == "+cpu +memory")
    }

    /// A pool that is gone leaves every hierarchy once its partition is empty, the unified one included.
    @Test func removedPoolsLeaveEveryHierarchy() throws {
        let pools = try layout(Self.hybrid)
        let gold = HostPoolSetting(name: "gold", parent: nil, path: ["gold"], cpuShares: 1024, cpuLimitMHz: nil, cpuReservationMHz: 0,
                                   memoryLimitMiB: nil, memoryReservationMiB: 0, vms: 0)
        var bronze = gold
        bronze.name = "bronze"
        bronze.path = ["bronze"]
        _ = try pools.apply([gold, bronze], coreMHz: 2000)
        #expect(exists("unified/machine/bronze.partition") && exists("cpu/machine/bronze.partition"))
        _ = try pools.apply([gold], coreMHz: 2000)
        #expect(!exists("unified/machine/bronze.partition") && !exists("cpu/machine/bronze.partition"))
        #expect(exists("unified/machine/gold.partition"))
    }

    @Test func systemdHostsMakeNoCgroupfsPartitions() throws {
        let text = Self.v2.replacingOccurrences(of: " /sys/fs/cgroup", with: " \(root)/sys/fs/cgroup")
        try FileManager.default.createDirectory(atPath: "\(root)/sys/fs/cgroup", withIntermediateDirectories: true)
        let pools = PoolPartitions(mountinfo: { text }, systemd: { true })
        try pools.ensure(["gold"])
        #expect(!exists("machine"))
    }
}
