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

    /// What the agent asked systemctl, in order.
    final class Calls: @unchecked Sendable {
        var list: [[String]] = []
        let lock = NSLock()
        func add(_ a: [String]) { lock.withLock { list.append(a) } }
        var all: [[String]] { lock.withLock { list } }
    }

    func systemdHost(_ recorded: String, calls: Calls, fail: Set<String> = []) throws -> PoolPartitions {
        let text = recorded.replacingOccurrences(of: " /sys/fs/cgroup", with: " \(root)/sys/fs/cgroup")
        for h in PoolPartitions.hierarchies(mountinfo: text, read: { _ in nil }) {
            try FileManager.default.createDirectory(atPath: h.mount, withIntermediateDirectories: true)
            if h.v2 && !recorded.contains(" - cgroup cgroup ") {
                try "cpuset cpu io memory pids\n".write(toFile: "\(h.mount)/cgroup.controllers", atomically: false, encoding: .utf8)
            }
        }
        try FileManager.default.createDirectory(atPath: "\(root)/run/systemd/system.control", withIntermediateDirectories: true)
        return PoolPartitions(
            mountinfo: { text }, systemd: { true },
            systemctl: { args in
                calls.add(args)
                if let slice = args.dropFirst().first(where: { $0.hasSuffix(".slice") }), fail.contains(slice) {
                    throw AgentError.internalError("Unit \(slice) failed")
                }
                return ""
            },
            runtimeControlDir: "\(root)/run/systemd/system.control")
    }

    /// libvirt's naming of a partition's slice (virSystemdMakeSliceName): levels joined by `-`, a `-`
    /// inside a name escaped; the cgroup directories nest.
    @Test func sliceNamesFollowLibvirt() {
        #expect(PoolSlices.name(["gold"]) == "machine-gold.slice")
        #expect(PoolSlices.name(["gold", "silver"]) == "machine-gold-silver.slice")
        #expect(PoolSlices.name(["gold-tier"]) == "machine-gold\\x2dtier.slice")
        #expect(PoolSlices.directory(["gold", "silver"]) == "machine.slice/machine-gold.slice/machine-gold-silver.slice")
        #expect(PoolSlices.domainName(scope: "machine-qemu\\x2d3\\x2dweb\\x2d1.scope") == "web-1")
        #expect(PoolSlices.unescape(PoolSlices.escape("a-b-c")) == "a-b-c")
    }

    @Test func slicePropertiesCarryTheShare() {
        let s = HostPoolSetting(name: "gold", parent: nil, path: ["gold"], cpuShares: 2048, cpuLimitMHz: 1500, cpuReservationMHz: 0,
                                memoryLimitMiB: 512, memoryReservationMiB: 128, vms: 1)
        #expect(PoolSlices.properties(s, coreMHz: 3000) == [
            "CPUWeight=200", "CPUQuota=50.00%", "CPUQuotaPeriodSec=100ms", "MemoryMax=536870912", "MemoryLow=134217728",
        ])
        var open = s
        open.cpuLimitMHz = nil
        open.memoryLimitMiB = nil
        #expect(PoolSlices.properties(open, coreMHz: 3000).contains("CPUQuota="), "an empty CPUQuota lifts the limit")
        #expect(PoolSlices.properties(open, coreMHz: 3000).contains("MemoryMax=infinity"))
        #expect(PoolSlices.percent(micros: 1000) == "1.00%" && PoolSlices.percent(micros: 250_000) == "250.00%")
        // systemd caps CPUWeight at 10000 (102400 shares).
        for shares in [2, 100, 1024, 5000, 102_400] {
            #expect(abs(PoolSlices.shares(weight: PoolSlices.weight(shares: shares)) - shares) <= max(11, shares / 50), "\(shares)")
        }
    }

    /// On a systemd host the pools are slices tuned through systemd, parents first; no cgroupfs
    /// partition is made; a slice of a pool that is gone is stopped only when it is the agent's and empty.
    @Test func systemdHostsTuneSlices() throws {
        let calls = Calls()
        let pools = try systemdHost(Self.v2, calls: calls)
        let gold = HostPoolSetting(name: "gold", parent: nil, path: ["gold"], cpuShares: 1024, cpuLimitMHz: nil, cpuReservationMHz: 0,
                                   memoryLimitMiB: 1024, memoryReservationMiB: 0, vms: 0)
        var silver = gold
        silver.name = "silver"
        silver.parent = "gold"
        silver.path = ["gold", "silver"]
        _ = try pools.apply([silver, gold], coreMHz: 2000)
        #expect(calls.all.map { Array($0.prefix(3)) } == [
            ["set-property", "--runtime", "machine-gold.slice"], ["start", "machine-gold.slice"],
            ["set-property", "--runtime", "machine-gold-silver.slice"], ["start", "machine-gold-silver.slice"],
        ])
        #expect(!exists("machine"))
        // The same share again, the slices realized: systemd is not asked again; a changed one is.
        for d in ["machine-gold.slice/machine-gold-silver.slice"] {
            try FileManager.default.createDirectory(atPath: "\(root)/sys/fs/cgroup/machine.slice/\(d)", withIntermediateDirectories: true)
        }
        calls.list.removeAll()
        _ = try pools.apply([silver, gold], coreMHz: 2000)
        #expect(calls.all.isEmpty, "\(calls.all)")
        var richer = gold
        richer.cpuShares = 4096
        _ = try pools.apply([silver, richer], coreMHz: 2000)
        #expect(calls.all.map { Array($0.prefix(3)) } == [["set-property", "--runtime", "machine-gold.slice"], ["start", "machine-gold.slice"]])
        // Gone: bronze's slice (the agent's, empty) is stopped; an operator's own slice is left alone.
        let cg = "\(root)/sys/fs/cgroup/machine.slice"
        for d in ["machine-bronze.slice", "machine-theirs.slice", "machine-busy.slice/machine-qemu\\x2d1\\x2dvm.scope"] {
            try FileManager.default.createDirectory(atPath: "\(cg)/\(d)", withIntermediateDirectories: true)
        }
        for ours in ["machine-bronze.slice", "machine-busy.slice"] {
            try FileManager.default.createDirectory(atPath: "\(root)/run/systemd/system.control/\(ours).d", withIntermediateDirectories: true)
        }
        calls.list.removeAll()
        let read = try pools.apply([gold], coreMHz: 2000)
        #expect(calls.all.contains(["stop", "machine-bronze.slice"]) && calls.all.contains(["revert", "machine-bronze.slice"]))
        #expect(!calls.all.contains { $0.contains("machine-theirs.slice") })
        #expect(!calls.all.contains(["stop", "machine-busy.slice"]), "a VM still runs in it")
        let busy = try #require(read.first { $0.name == "busy" })
        #expect(busy.domains == ["vm"] && busy.errors.contains { $0.contains("no longer a resource pool") })
    }

    /// What systemd refuses is the pool's error, and a v1 memory controller cannot enforce MemoryLow.
    @Test func sliceProblemsAreReported() throws {
        let calls = Calls()
        let pools = try systemdHost(Self.hybrid, calls: calls, fail: ["machine-gold.slice"])
        let gold = HostPoolSetting(name: "gold", parent: nil, path: ["gold"], cpuShares: 1024, cpuLimitMHz: nil, cpuReservationMHz: 0,
                                   memoryLimitMiB: nil, memoryReservationMiB: 256, vms: 0)
        let read = try pools.apply([gold], coreMHz: 2000)
        let errors = try #require(read.first { $0.name == "gold" }).errors
        #expect(errors.contains { $0.hasPrefix("systemctl machine-gold.slice:") && $0.contains("failed") })
        #expect(errors.contains { $0.contains("MemoryLow needs cgroup v2") })
        #expect(throws: AgentError.self) { try pools.ensure(["gold"]) }
        try pools.ensure(["silver"])
        #expect(calls.all.last == ["start", "machine-silver.slice"])
    }
}

/// Disk paths are judged with their links resolved, also before they exist.
@Suite struct DiskPathTests {
    @Test func pathsResolveThroughLinksAndMissingTails() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("disk-paths-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir + "/pool", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        symlink("/etc", dir + "/pool/escape")
        let real = try #require(HostAgent.realPath(dir))
        #expect(HostAgent.resolved(dir + "/pool/new/sub/disk.qcow2") == real + "/pool/new/sub/disk.qcow2")
        #expect(HostAgent.resolved(dir + "/pool/escape/shadow") == "/etc/shadow", "a link out of the pool is followed, so it is judged outside")
        #expect(HostAgent.resolved("/no-such-dir/x") == "/no-such-dir/x")
        #expect(HostAgent.resolved("/") == "")
    }
}
