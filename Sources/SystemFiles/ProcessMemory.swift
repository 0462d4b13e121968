/// A process's memory as the kernel accounts it, from /proc/PID/status and /proc/PID/smaps_rollup.
///
/// What a daemon costs its host is its anonymous memory (heap, stacks, private copies: `RssAnon`) and
/// its proportional share of the pages it maps (`Pss`). Clean file pages of code and libraries count in
/// `VmRSS` too, but the kernel shares them with every other process that maps the same files and
/// reclaims them when memory runs short, so they are reported, not targeted (docs/benchmarks.md).
public enum ProcessMemory {
    /// Resident memory in KiB.
    public struct Resident: Sendable, Equatable {
        public var total: Int
        public var anonymous: Int
        public var file: Int
        /// The highest `total` since the process started (VmHWM).
        public var peak: Int
        /// Proportional set size (smaps_rollup), when the kernel has it.
        public var proportional: Int?
        public init(total: Int, anonymous: Int, file: Int, peak: Int, proportional: Int? = nil) {
            self.total = total
            self.anonymous = anonymous
            self.file = file
            self.peak = peak
            self.proportional = proportional
        }
    }

    /// This process's resident memory, or another's by pid.
    public static func resident(pid: Int? = nil) -> Resident? {
        let dir = pid.map { "/proc/\($0)" } ?? "/proc/self"
        guard let text = TextFile.read("\(dir)/status"), var r = parseStatus(text) else { return nil }
        r.proportional = TextFile.read("\(dir)/smaps_rollup").flatMap { kilobytes($0)["Pss"] }
        return r
    }

    /// Reads VmRSS, RssAnon, RssFile and VmHWM (kB) from the text of /proc/PID/status.
    public static func parseStatus(_ text: String) -> Resident? {
        let values = kilobytes(text)
        guard let total = values["VmRSS"], let anon = values["RssAnon"], let file = values["RssFile"], let peak = values["VmHWM"] else { return nil }
        return Resident(total: total, anonymous: anon, file: file, peak: peak)
    }

    /// Every `Key: N kB` line of a /proc file.
    static func kilobytes(_ text: String) -> [String: Int] {
        var values: [String: Int] = [:]
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let fields = line[line.index(after: colon)...].split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.count == 2, fields[1] == "kB", let v = Int(fields[0]) { values[String(line[..<colon])] = v }
        }
        return values
    }
}
