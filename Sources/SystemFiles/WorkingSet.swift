import CLinkMap
import CMalloc

#if canImport(Glibc)
import Glibc
#endif

/// The process's resident set, and trimming it to what the process still uses.
///
/// A daemon touches much of its code and of its libraries' code once, to start: argument parsing, TLS
/// set-up, the libraries' own initialisation (libssh's constructor alone initialises OpenSSL, 2.9 MiB of
/// libcrypto). Those clean file pages stay mapped, and counted in its RSS, until memory runs short. The
/// agent measured 32–34 MiB resident a minute after start under the controller, and 19–21 MiB in the
/// steady state once those pages were dropped (docs/benchmarks.md, vm-start).
///
/// `trim()` drops from the page tables the resident pages of the read-only segments of every object
/// the dynamic linker loaded (the executable, its libraries): MADV_DONTNEED on a private file mapping
/// whose pages are the file's own. Only the bytes a segment maps from its file count, and of those only
/// pages that are still the file's (`/proc/self/pagemap`: a private copy, made by a text relocation, a
/// debugger's breakpoint or a uprobe, stays), in objects without text relocations, on no page a
/// writable or RELRO segment shares. Anonymous memory is never touched. The ranges come from
/// `dl_iterate_phdr`, which holds the loader's lock while it runs, so no object is unloaded (and its
/// range reused) meanwhile; nothing is allocated while that lock is held (an allocator that unwinds
/// stacks takes it too).
///
/// The page cache keeps the dropped pages, so what runs next faults them back without I/O as long as
/// they stay cached. The trade-off: a cached page no process maps is reclaimed before a mapped one, so
/// under memory pressure the agent's code comes back from disk; and the pages stay charged to the
/// agent's cgroup (memory.current) until then. The RSS the kernel reports is what the agent touched
/// since.
public enum WorkingSet {
    /// Resident memory of this process in KiB, from /proc/self/status.
    public struct Resident: Sendable, Equatable {
        public var total: Int
        public var anonymous: Int
        public var file: Int
        /// The highest `total` since the process started (VmHWM).
        public var peak: Int
        public init(total: Int, anonymous: Int, file: Int, peak: Int) {
            self.total = total
            self.anonymous = anonymous
            self.file = file
            self.peak = peak
        }
    }

    public static func resident() -> Resident? {
        guard let text = TextFile.read("/proc/self/status") else { return nil }
        return parseStatus(text)
    }

    /// Reads VmRSS, RssAnon, RssFile and VmHWM (kB) from the text of /proc/PID/status.
    public static func parseStatus(_ text: String) -> Resident? {
        var values: [String: Int] = [:]
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = String(line[..<colon])
            guard ["VmRSS", "RssAnon", "RssFile", "VmHWM"].contains(key) else { continue }
            let fields = line[line.index(after: colon)...].split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.count == 2, fields[1] == "kB", let v = Int(fields[0]) { values[key] = v }
        }
        guard let total = values["VmRSS"], let anon = values["RssAnon"], let file = values["RssFile"], let peak = values["VmHWM"] else { return nil }
        return Resident(total: total, anonymous: anon, file: file, peak: peak)
    }

    /// A segment of a loaded object, in the process's address space: `size` bytes from `start`, the
    /// first `fileSize` of them mapped from the object's file (the rest, if any, zero-filled).
    public struct Segment: Sendable, Equatable {
        public var start: UInt
        public var size: UInt
        public var fileSize: UInt
        public var writable: Bool
        public init(start: UInt, size: UInt, fileSize: UInt? = nil, writable: Bool) {
            self.start = start
            self.size = size
            self.fileSize = min(fileSize ?? size, size)
            self.writable = writable
        }
    }

    /// Whether the page at `page` (aligned to `pageSize`) may be dropped as far as the layout goes: it
    /// lies wholly within the file-backed bytes of a read-only segment and shares nothing with a
    /// writable one (whose pages round outwards: the loader may start it on the page another ends on).
    public static func mayDrop(page: UInt, pageSize: UInt, segments: UnsafeBufferPointer<Segment>) -> Bool {
        var inside = false
        for s in segments {
            if s.writable {
                guard s.size > 0 else { continue }
                let lo = s.start & ~(pageSize - 1)
                let hi = (s.start + s.size + pageSize - 1) & ~(pageSize - 1)
                if page < hi && lo < page + pageSize { return false }
            } else if s.start <= page && page + pageSize <= s.start + s.fileSize {
                inside = true
            }
        }
        return inside
    }

    /// The whole pages of a read-only segment's file-backed bytes: `mayDrop` is asked of these only.
    public static func pageSpan(_ s: Segment, pageSize: UInt) -> Range<UInt> {
        let lo = (s.start + pageSize - 1) & ~(pageSize - 1)
        let hi = (s.start + s.fileSize) & ~(pageSize - 1)
        return lo..<max(lo, hi)
    }

    /// Calls `drop` with each maximal run of whole pages, in each read-only segment's file-backed bytes
    /// in turn, that `mayDrop` allows and `keep` (given the page and the end of its segment's span)
    /// does not hold back. Allocates nothing: `trim` runs it under the loader's lock.
    public static func forEachDroppableRun(
        _ segments: UnsafeBufferPointer<Segment>, pageSize: UInt, keep: (_ page: UInt, _ spanEnd: UInt) -> Bool,
        _ drop: (Range<UInt>) -> Void
    ) {
        for s in segments where !s.writable {
            let span = pageSpan(s, pageSize: pageSize)
            var run: UInt? = nil
            var page = span.lowerBound
            while page < span.upperBound {
                if !keep(page, span.upperBound) && mayDrop(page: page, pageSize: pageSize, segments: segments) {
                    if run == nil { run = page }
                } else if let lo = run {
                    drop(lo..<page)
                    run = nil
                }
                page += pageSize
            }
            if let lo = run { drop(lo..<span.upperBound) }
        }
    }

    /// The page-aligned ranges `mayDrop` allows, merged, in address order: what `trim` drops of a
    /// layout (`trim` also holds back pages that are no longer the file's).
    public static func trimRanges(_ segments: [Segment], pageSize: UInt) -> [Range<UInt>] {
        precondition(pageSize > 0 && pageSize & (pageSize - 1) == 0, "page size must be a power of two")
        var out: [Range<UInt>] = []
        segments.sorted(by: { $0.start < $1.start }).withUnsafeBufferPointer { all in
            forEachDroppableRun(all, pageSize: pageSize, keep: { _, _ in false }) { r in
                if let last = out.last, last.upperBound >= r.lowerBound {
                    out[out.count - 1] = last.lowerBound..<max(last.upperBound, r.upperBound)
                } else {
                    out.append(r)
                }
            }
        }
        return out
    }

    /// What one trim did.
    public struct Trim: Sendable {
        public var before: Resident?
        public var after: Resident?
        /// Ranges dropped and their bytes.
        public var ranges: Int
        public var bytes: UInt
    }

    /// Drops the clean file pages of every loaded object's read-only segments from this process's page
    /// tables, and gives malloc's free pages back (malloc_trim); see the type's documentation.
    public static func trim() -> Trim {
        let before = resident()
        let tally = TrimTally(pageSize: UInt(sysconf(Int32(_SC_PAGESIZE))))
        defer { tally.release() }
        _ = malloc_trim(0)
        // Without pagemap no page can be told from a private copy: nothing is dropped.
        if tally.pagemap >= 0 {
            withExtendedLifetime(tally) {
                _ = clinkmap_iterate_phdr(trimObject, Unmanaged.passUnretained(tally).toOpaque())
            }
        }
        return Trim(before: before, after: resident(), ranges: tally.ranges, bytes: tally.bytes)
    }
}

/// What the callback needs, allocated before the loader's lock is taken.
private final class TrimTally {
    let pageSize: UInt
    let pagemap: Int32
    /// One object's segments.
    let segments = UnsafeMutableBufferPointer<WorkingSet.Segment>.allocate(capacity: 64)
    /// pagemap entries of up to 4096 pages at a time: those of `windowCount` pages from `windowStart`.
    let entries = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 4096)
    var windowStart: UInt = 0
    var windowCount = 0
    var ranges = 0
    var bytes: UInt = 0

    init(pageSize: UInt) {
        self.pageSize = pageSize
        pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
    }

    func release() {
        if pagemap >= 0 { close(pagemap) }
        segments.deallocate()
        entries.deallocate()
    }

    /// Whether the page is a private copy, no longer the file's: present (bit 63) or swapped out (bit
    /// 62; a private copy is anonymous) and not a file page (bit 61). Read from pagemap a window at a
    /// time, up to `spanEnd`; a page whose entry cannot be read is held back too. (A copy made between
    /// this read and the madvise, by a debugger writing at that moment, is not seen.)
    func isPrivateCopy(_ page: UInt, spanEnd: UInt) -> Bool {
        if page < windowStart || page >= windowStart + UInt(windowCount) * pageSize {
            let n = min(entries.count, Int((spanEnd - page) / pageSize))
            let got = pread(pagemap, entries.baseAddress, n * MemoryLayout<UInt64>.size, off_t(page / pageSize) * 8)
            guard got > 0 else {
                windowCount = 0
                return true
            }
            windowStart = page
            windowCount = got / MemoryLayout<UInt64>.size
            guard windowCount > 0 else { return true }
        }
        let e = entries[Int((page - windowStart) / pageSize)]
        return e & (1 << 61) == 0 && e & ((1 << 63) | (1 << 62)) != 0
    }

    func drop(_ pages: Range<UInt>) {
        guard !pages.isEmpty else { return }
        if madvise(UnsafeMutableRawPointer(bitPattern: pages.lowerBound), Int(pages.upperBound - pages.lowerBound), MADV_DONTNEED) == 0 {
            ranges += 1
            bytes += pages.upperBound - pages.lowerBound
        }
    }
}

/// Whether the object's dynamic section asks for text relocations (its code was patched on load).
private func hasTextRelocations(_ dynamic: UnsafePointer<Elf64_Dyn>) -> Bool {
    var d = dynamic
    for _ in 0..<4096 {
        let tag = d.pointee.d_tag
        if tag == Int64(DT_NULL) { return false }
        if tag == Int64(DT_TEXTREL) { return true }
        if tag == Int64(DT_FLAGS) && d.pointee.d_un.d_val & UInt64(DF_TEXTREL) != 0 { return true }
        d += 1
    }
    return true
}

/// dl_iterate_phdr's callback: drops the pages of one loaded object's read-only segments that are still
/// its file's. Allocates nothing.
private func trimObject(_ info: UnsafeMutablePointer<clinkmap_phdr_info>?, _ size: Int, _ context: UnsafeMutableRawPointer?) -> Int32 {
    guard let info, let context else { return 0 }
    let tally = Unmanaged<TrimTally>.fromOpaque(context).takeUnretainedValue()
    let object = info.pointee
    // The vDSO is the kernel's own mapping, not a file's.
    if let name = object.dlpi_name, strncmp(name, "linux-vdso", 10) == 0 { return 0 }
    guard let headers = object.dlpi_phdr, Int(object.dlpi_phnum) <= tally.segments.count else { return 0 }
    let base = UInt(object.dlpi_addr)
    var count = 0
    for i in 0..<Int(object.dlpi_phnum) {
        let ph = headers[i]
        if ph.p_type == UInt32(PT_DYNAMIC), let dynamic = UnsafePointer<Elf64_Dyn>(bitPattern: base &+ UInt(ph.p_vaddr)),
            hasTextRelocations(dynamic)
        {
            return 0
        }
        guard ph.p_type == UInt32(PT_LOAD) || ph.p_type == UInt32(PT_GNU_RELRO) else { continue }
        // RELRO is written by the loader before it is made read-only: it counts as writable.
        let writable = ph.p_type == UInt32(PT_GNU_RELRO) || ph.p_flags & UInt32(PF_W) != 0
        tally.segments[count] = WorkingSet.Segment(start: base &+ UInt(ph.p_vaddr), size: UInt(ph.p_memsz), fileSize: UInt(ph.p_filesz), writable: writable)
        count += 1
    }
    let segments = UnsafeBufferPointer(rebasing: tally.segments[0..<count])
    WorkingSet.forEachDroppableRun(segments, pageSize: tally.pageSize, keep: { tally.isPrivateCopy($0, spanEnd: $1) }) { tally.drop($0) }
    return 0
}
