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
/// agent measured 32 MiB resident after a few minutes under the controller, of which 19 MiB was what it
/// touched again afterwards (docs/benchmarks.md, vm-start).
///
/// `trim()` drops from the page tables the resident pages of the read-only, non-writable segments of
/// every object the dynamic linker loaded (the executable, its libraries): MADV_DONTNEED on a private
/// file mapping whose pages are the file's own. The page cache keeps them; whatever runs next faults
/// its pages back in (minor faults, no I/O). Writable segments (data, relocated read-only data, bss) and
/// anonymous memory are never touched. The ranges come from `dl_iterate_phdr`, which holds the loader's
/// lock while it runs, so no object is unloaded (and its range reused) while a range is dropped.
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

    /// A segment of a loaded object, in the process's address space.
    public struct Segment: Sendable, Equatable {
        public var start: UInt
        public var size: UInt
        public var writable: Bool
        public init(start: UInt, size: UInt, writable: Bool) {
            self.start = start
            self.size = size
            self.writable = writable
        }
    }

    /// The page-aligned ranges wholly inside the non-writable segments: what `trim` drops. A page that
    /// a writable segment shares (the linker may start one on the page another ends on) is left alone.
    public static func trimRanges(_ segments: [Segment], pageSize: UInt) -> [Range<UInt>] {
        precondition(pageSize > 0 && pageSize & (pageSize - 1) == 0, "page size must be a power of two")
        let writable = segments.filter(\.writable).map { ($0.start & ~(pageSize - 1))..<(($0.start + $0.size + pageSize - 1) & ~(pageSize - 1)) }
        var out: [Range<UInt>] = []
        for s in segments where !s.writable && s.size > 0 {
            let lo = (s.start + pageSize - 1) & ~(pageSize - 1)
            let hi = (s.start + s.size) & ~(pageSize - 1)
            guard lo < hi else { continue }
            var pieces = [lo..<hi]
            for w in writable {
                pieces = pieces.flatMap { p -> [Range<UInt>] in
                    guard p.overlaps(w) else { return [p] }
                    return [p.lowerBound..<max(p.lowerBound, w.lowerBound), min(p.upperBound, w.upperBound)..<p.upperBound].filter { !$0.isEmpty }
                }
            }
            out += pieces
        }
        return out.sorted { $0.lowerBound < $1.lowerBound }
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
        withExtendedLifetime(tally) {
            _ = dl_iterate_phdr(trimObject, Unmanaged.passUnretained(tally).toOpaque())
        }
        _ = malloc_trim(0)
        return Trim(before: before, after: resident(), ranges: tally.ranges, bytes: tally.bytes)
    }
}

private final class TrimTally {
    let pageSize: UInt
    var ranges = 0
    var bytes: UInt = 0
    init(pageSize: UInt) { self.pageSize = pageSize }
}

/// dl_iterate_phdr's callback: drops the read-only segments' pages of one loaded object.
private func trimObject(_ info: UnsafeMutablePointer<dl_phdr_info>?, _ size: Int, _ context: UnsafeMutableRawPointer?) -> Int32 {
    guard let info, let context else { return 0 }
    let tally = Unmanaged<TrimTally>.fromOpaque(context).takeUnretainedValue()
    // The vDSO is the kernel's own mapping, not a file's.
    if let name = info.pointee.dlpi_name, String(cString: name).hasPrefix("linux-vdso") { return 0 }
    var segments: [WorkingSet.Segment] = []
    for i in 0..<Int(info.pointee.dlpi_phnum) {
        let ph = info.pointee.dlpi_phdr[i]
        guard ph.p_type == UInt32(PT_LOAD) || ph.p_type == UInt32(PT_GNU_RELRO) else { continue }
        // RELRO is written by the loader before it is made read-only: it counts as writable.
        let writable = ph.p_type == UInt32(PT_GNU_RELRO) || ph.p_flags & UInt32(PF_W) != 0
        segments.append(WorkingSet.Segment(start: UInt(info.pointee.dlpi_addr) &+ UInt(ph.p_vaddr), size: UInt(ph.p_memsz), writable: writable))
    }
    for r in WorkingSet.trimRanges(segments, pageSize: tally.pageSize) {
        if madvise(UnsafeMutableRawPointer(bitPattern: r.lowerBound), Int(r.upperBound - r.lowerBound), MADV_DONTNEED) == 0 {
            tally.ranges += 1
            tally.bytes += r.upperBound - r.lowerBound
        }
    }
    return 0
}
