#if canImport(Glibc)
import Glibc
#endif

/// Small text files read whole: kernel pseudo-files (procfs, sysfs, cgroupfs, which report a size of 0)
/// and the agent's own settings files.
///
/// Not `String(contentsOfFile:)`: on Linux, FoundationEssentials (Swift 6.3.1) reads a file that reports
/// a size of 0 into a 4 KiB buffer it allocates first, and when the file then reads empty it returns
/// that buffer as an empty `Data`, which never frees it. An empty cgroup file (`cgroup.controllers` of
/// a host's unused cgroup v2 hierarchy, `cpuset.cpus` of a new partition) or an empty regular file
/// leaks 4 KiB per read: the agent grew by 8 KiB for every resource-pool pass of the controller, about
/// 1 MiB a minute on the testbed (docs/benchmarks.md, vm-start).
public enum TextFile {
    /// The file's text, or nil when it cannot be opened or read, is not a regular file, is not UTF-8
    /// or is longer than `limit` bytes. A pseudo-file that honours O_NONBLOCK and has nothing to read
    /// yet (/proc/kmsg, a trace pipe) gives nil too.
    public static func read(_ path: String, limit: Int = 16 << 20) -> String? {
        guard let bytes = readBytes(path, limit: limit) else { return nil }
        // A byte order mark is not text (Foundation's reader drops it too): a hand-edited list must not
        // lose its first line to it.
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { return String(validating: bytes.dropFirst(3), as: UTF8.self) }
        return String(validating: bytes, as: UTF8.self)
    }

    /// The file's bytes, under the same conditions as `read`.
    public static func readBytes(_ path: String, limit: Int = 16 << 20) -> [UInt8]? {
        // Non-blocking open: a FIFO at the path must not hang the caller (it is refused below); no
        // terminal becomes the daemon's controlling one.
        var fd: Int32
        repeat { fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_size <= limit else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(min(limit, st.st_size > 0 ? Int(st.st_size) : 4096))
        let chunk = 4096
        let ok = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: chunk) { buffer -> Bool in
            while true {
                let n = Glibc.read(fd, buffer.baseAddress, chunk)
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                if n == 0 { return true }
                guard out.count + n <= limit else { return false }
                out.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[0..<n]))
            }
        }
        return ok ? out : nil
    }
}

extension TextFile {
    public struct WriteError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Replaces a file atomically with `text` (a new file renamed over it: readers see the old text or
    /// the new). The new file is created with `mode` from its first byte (O_CREAT|O_EXCL, the umask
    /// masked off), never written first and chmod'ed after, so a secret is never readable by others,
    /// even for an instant; a symbolic link at the temporary path is refused, not followed.
    public static func replace(_ path: String, _ text: String, mode: mode_t) throws(WriteError) {
        let tmp = path + ".new"
        unlink(tmp)
        var fd: Int32
        repeat { fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, mode) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw WriteError(description: "cannot create \(tmp): \(String(cString: strerror(errno)))") }
        var ok = fchmod(fd, mode) == 0  // the umask may have taken bits the caller asked for (0644 under 077)
        let bytes = Array(text.utf8)
        var done = 0
        while ok && done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { ok = false } else { done += n }
        }
        let why = String(cString: strerror(errno))
        ok = ok && fsync(fd) == 0
        close(fd)
        guard ok else {
            unlink(tmp)
            throw WriteError(description: "cannot write \(tmp): \(why)")
        }
        guard rename(tmp, path) == 0 else {
            let e = String(cString: strerror(errno))
            unlink(tmp)
            throw WriteError(description: "cannot replace \(path): \(e)")
        }
    }
}
