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

    /// Property: whatever the layout, every range is page-aligned, lies inside a read-only segment and
    /// shares no page with a writable one; and every whole page of a read-only segment that no writable
    /// segment touches is in some range.
    @Test func rangesNeverTouchWritablePages() {
        var rng = SplitMix(seed: 0x5EED_7215)
        for _ in 0..<500 {
            var segments: [WorkingSet.Segment] = []
            var at = UInt.random(in: 0...0x10000, using: &rng)
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                let size = UInt.random(in: 0...0x9000, using: &rng)
                segments.append(.init(start: at, size: size, writable: Bool.random(using: &rng)))
                at += size + UInt.random(in: 0...0x2000, using: &rng)
            }
            let ranges = WorkingSet.trimRanges(segments, pageSize: page)
            func touchesWritable(_ p: UInt) -> Bool {
                segments.contains { $0.writable && $0.size > 0 && $0.start < p + page && p < $0.start + $0.size }
            }
            for r in ranges {
                #expect(r.lowerBound % page == 0 && r.upperBound % page == 0 && !r.isEmpty)
                #expect(segments.contains { !$0.writable && $0.start <= r.lowerBound && r.upperBound <= $0.start + $0.size })
                for p in stride(from: r.lowerBound, to: r.upperBound, by: Int(page)) { #expect(!touchesWritable(p)) }
            }
            for s in segments where !s.writable {
                var p = (s.start + page - 1) / page * page
                while p + page <= s.start + s.size {
                    if !touchesWritable(p) { #expect(ranges.contains { $0.contains(p) }) }
                    p += page
                }
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

    /// On this very process: the trim drops file pages, leaves anonymous memory alone, and the code
    /// it dropped runs again afterwards.
    @Test func trimDropsFilePagesAndTheProcessRunsOn() throws {
        let t = WorkingSet.trim()
        #expect(t.ranges > 0 && t.bytes > 0)
        let before = try #require(t.before), after = try #require(t.after)
        #expect(after.file < before.file, "file pages resident: \(before.file) KiB before, \(after.file) KiB after")
        // Code of the test runner and of Swift's runtime, just dropped, faults back in.
        let again = (0..<1000).map { String($0) }.joined(separator: ",")
        #expect(again.hasPrefix("0,1,2"))
        #expect(WorkingSet.resident() != nil)
    }
}
