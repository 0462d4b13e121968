import CLinkMap
import Glibc
import SystemFiles
import TestSupport
import Testing

@Suite struct WorkingSetTests {
    let page: UInt = 4096

    @Test func dropsWholePagesOfReadOnlySegmentsOnly() {
        // Code from 0x1100 to 0x5100, then data from 0x5100 (its first page is shared with the code's last).
        let r = WorkingSet.trimRanges([
            .init(start: 0x1100, size: 0x4000, writable: false),
            .init(start: 0x5100, size: 0x2000, writable: true),
        ], pageSize: page)
        #expect(r == [0x2000..<0x5000])
        // A segment smaller than a page, and an empty one, give nothing.
        #expect(WorkingSet.trimRanges([.init(start: 0x1010, size: 0x800, writable: false), .init(start: 0x9000, size: 0, writable: false)], pageSize: page).isEmpty)
        // RELRO inside a read-only range (as a loader would see it listed) is cut out of it.
        #expect(WorkingSet.trimRanges([
            .init(start: 0x10000, size: 0x8000, writable: false),
            .init(start: 0x12000, size: 0x1800, writable: true),
        ], pageSize: page) == [0x10000..<0x12000, 0x14000..<0x18000])
    }

    @Test func onlyFileBackedBytesCount() {
        // A read-only segment whose last 0x2800 bytes are zero-filled, not the file's.
        #expect(WorkingSet.trimRanges([.init(start: 0x1000, size: 0x5000, fileSize: 0x2800, writable: false)], pageSize: page) == [0x1000..<0x3000])
    }

    /// Property: for any layout (overlapping segments, in any order), the ranges are exactly the pages
    /// lying wholly in a read-only segment's file-backed bytes and sharing no byte's page with a writable
    /// segment; merged, aligned, in address order.
    @Test func rangesAreExactlyTheDroppablePages() {
        var rng = SplitMix(seed: 0x5EED_7215)
        for _ in 0..<400 {
            var segments: [WorkingSet.Segment] = []
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                let start = UInt.random(in: 0...0x20000, using: &rng)
                let size = UInt.random(in: 0...0x9000, using: &rng)
                let fileSize = Bool.random(using: &rng) ? size : UInt.random(in: 0...size, using: &rng)
                segments.append(.init(start: start, size: size, fileSize: fileSize, writable: Bool.random(using: &rng)))
            }
            let ranges = WorkingSet.trimRanges(segments, pageSize: page)
            func droppable(_ p: UInt) -> Bool {
                let inFile = segments.contains { !$0.writable && $0.start <= p && p + page <= $0.start + $0.fileSize }
                let nearWritable = segments.contains { w in
                    w.writable && w.size > 0 && (w.start / page * page) < p + page && p < (w.start + w.size + page - 1) / page * page
                }
                return inFile && !nearWritable
            }
            for (a, b) in zip(ranges, ranges.dropFirst()) { #expect(a.upperBound < b.lowerBound) }
            for r in ranges {
                #expect(r.lowerBound % page == 0 && r.upperBound % page == 0 && !r.isEmpty)
                for p in stride(from: r.lowerBound, to: r.upperBound, by: Int(page)) { #expect(droppable(p)) }
            }
            for p in stride(from: UInt(0), to: 0x2A000, by: Int(page)) where droppable(p) {
                #expect(ranges.contains { $0.contains(p) }, "page \(p) of \(segments)")
            }
        }
    }

    @Test func readsTheResidentSetFromStatus() throws {
        let text = "Name:\tvsphere-agent\nVmHWM:\t   32396 kB\nVmRSS:\t   19028 kB\nRssAnon:\t    5904 kB\nRssFile:\t   13124 kB\nRssShmem:\t       0 kB\n"
        #expect(WorkingSet.parseStatus(text) == .init(total: 19028, anonymous: 5904, file: 13124, peak: 32396))
        #expect(WorkingSet.parseStatus("VmRSS:\t1 kB\n") == nil)
        let mine = try #require(WorkingSet.resident())
        #expect(mine.total > 0 && mine.anonymous > 0 && mine.file > 0 && mine.anonymous + mine.file <= mine.total)
        #expect(mine.peak >= mine.total)
    }

    /// On this very process: the trim drops ranges of file pages and the code it dropped runs again
    /// afterwards. (How much resident memory that saves is measured on the agent, in `make bench`: here
    /// the tests running beside this one fault their pages straight back.)
    @Test func trimDropsFilePagesAndTheProcessRunsOn() throws {
        let t = WorkingSet.trim()
        #expect(t.ranges > 0 && t.bytes > 0)
        #expect(t.before != nil && t.after != nil)
        // Code of the test runner and of Swift's runtime, just dropped, faults back in.
        let again = (0..<1000).map { String($0) }.joined(separator: ",")
        #expect(again.hasPrefix("0,1,2"))
        #expect(WorkingSet.resident() != nil)
    }

    /// A page of a read-only segment that is no longer the file's (a private copy, as a text
    /// relocation, a breakpoint or a uprobe makes one) is kept, whatever its layout allows.
    @Test func privateCopiesAreKept() throws {
        // The page holding this executable's program headers, in its first, read-only segment.
        let headers = UInt(getauxval(UInt(AT_PHDR)))
        let pageSize = UInt(sysconf(Int32(_SC_PAGESIZE)))
        let target = try #require(UnsafeMutableRawPointer(bitPattern: headers & ~(pageSize - 1)))
        // Its protection now (a linker may put the headers in the code's segment).
        let maps = try #require(TextFile.read("/proc/self/maps"))
        let line = try #require(maps.split(separator: "\n").first { l in
            let r = l.split(separator: " ")[0].split(separator: "-").compactMap { UInt($0, radix: 16) }
            return r.count == 2 && r[0] <= UInt(bitPattern: target) && UInt(bitPattern: target) < r[1]
        })
        let perms = line.split(separator: " ")[1]
        try #require(perms.hasPrefix("r-") && perms.hasSuffix("p"), "\(line)")
        let prot = PROT_READ | (perms.contains("x") ? PROT_EXEC : 0)
        // Copy it privately by writing back the byte it holds.
        #expect(mprotect(target, Int(pageSize), prot | PROT_WRITE) == 0)
        let at = target.advanced(by: Int(headers & (pageSize - 1))).assumingMemoryBound(to: UInt8.self)
        var byte = at.pointee
        memcpy(UnsafeMutableRawPointer(at), &byte, 1)
        #expect(mprotect(target, Int(pageSize), prot) == 0)
        func entry() throws -> UInt64 {
            let fd = open("/proc/self/pagemap", O_RDONLY)
            defer { close(fd) }
            var e: UInt64 = 0
            #expect(pread(fd, &e, 8, off_t(UInt(bitPattern: target) / pageSize) * 8) == 8)
            return e
        }
        let copy: (UInt64) -> Bool = { $0 & (1 << 63) != 0 && $0 & (1 << 61) == 0 }
        let written = try entry()
        #expect(copy(written), "the write made no private copy: pagemap \(String(written, radix: 16)), \(line)")
        _ = WorkingSet.trim()
        #expect(copy(try entry()), "the trim dropped a private copy")
    }
}
