import FoundationEssentials
import Glibc
import SystemFiles
import Testing

@Suite final class TextFileTests {
    /// This test's own directory (Swift Testing makes a suite instance per test), removed after it.
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("textfile-\(getpid())-\(UInt64.random(in: 0...UInt64.max))").path

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    func scratch(_ name: String, _ text: String?) throws -> String {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/" + name
        if let text { try text.write(toFile: path, atomically: false, encoding: .utf8) }
        return path
    }

    @Test func readsRegularFilesWhole() throws {
        let long = String(repeating: "0123456789abcdef", count: 1000)  // 16000 bytes: several reads
        #expect(TextFile.read(try scratch("short", "cpu memory\n")) == "cpu memory\n")
        #expect(TextFile.read(try scratch("long", long)) == long)
        #expect(TextFile.read(try scratch("empty", "")) == "")
        #expect(TextFile.read(try scratch("long", long), limit: 100) == nil)
    }

    @Test func readsKernelFilesThatReportNoSize() throws {
        // procfs reports a size of 0: the text comes from reading to the end, past the first 4 KiB.
        var st = stat()
        #expect(stat("/proc/self/smaps", &st) == 0 && st.st_size == 0)
        let smaps = try #require(TextFile.read("/proc/self/smaps"))
        #expect(smaps.utf8.count > 4096)
        #expect(smaps.contains("[stack]"))
        let status = try #require(TextFile.read("/proc/self/status"))
        #expect(status.contains("\nPid:\t\(getpid())\n"))
    }

    @Test func dropsAByteOrderMark() throws {
        let path = try scratch("bom", "\u{FEFF}abcd\n")
        #expect(TextFile.read(path) == "abcd\n")
        #expect(TextFile.readBytes(path)?.prefix(3) == [0xEF, 0xBB, 0xBF])
    }

    @Test func refusesWhatIsNotARegularFile() throws {
        #expect(TextFile.read("/nonexistent/file") == nil)
        #expect(TextFile.read("/proc") == nil)
        let fifo = try scratch("fifo", nil)
        unlink(fifo)
        #expect(mkfifo(fifo, 0o600) == 0)
        #expect(TextFile.read(fifo) == nil)  // and it did not block on the FIFO
        unlink(fifo)
        let bad = try scratch("bad", "")
        let fd = open(bad, O_WRONLY | O_TRUNC)
        var bytes: [UInt8] = [0x66, 0xff, 0x66]
        _ = write(fd, &bytes, 3)
        close(fd)
        #expect(TextFile.read(bad) == nil)
        #expect(TextFile.readBytes(bad) == bytes)
    }

    /// The reason this reader exists: FoundationEssentials' `String(contentsOfFile:)` keeps 4 KiB for
    /// every empty file that reports a size of 0 (an empty cgroup file, an empty regular file): 160 MiB
    /// for the 40,000 reads here. The process's anonymous memory must stay as it was, give or take what
    /// tests running beside this one hold at the time (RssAnon counts the whole process).
    @Test func emptyFilesCostNothingToRead() throws {
        let empty = try scratch("empty-again", "")
        for _ in 0..<10 { _ = TextFile.read(empty) }
        let before = try #require(ProcessMemory.resident()).anonymous
        for _ in 0..<40_000 where TextFile.read(empty) != "" { Issue.record("an empty file read as something") }
        let grown = try #require(ProcessMemory.resident()).anonymous - before
        #expect(grown < 48 << 10, "anonymous memory grew by \(grown) KiB over 40,000 reads of an empty file")
    }

    /// A secret is created with its mode, whatever the umask: never readable by others, even for an
    /// instant; a file is replaced whole, and a symbolic link planted at the temporary name is not followed.
    @Test func secretsAreCreatedPrivate() throws {
        let path = try scratch("secret", nil)
        let old = umask(0)
        defer { umask(old) }
        try TextFile.replace(path, "s3cret\n", mode: 0o600)
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(TextFile.read(path) == "s3cret\n")
        try TextFile.replace(path, "again\n", mode: 0o600)
        #expect(TextFile.read(path) == "again\n")
        let elsewhere = try scratch("elsewhere", "untouched")
        symlink(elsewhere, path + ".new")
        try TextFile.replace(path, "third\n", mode: 0o600)
        #expect(TextFile.read(elsewhere) == "untouched" && TextFile.read(path) == "third\n")
    }

    @Test func readsTheResidentSetFromStatus() throws {
        let text = "Name:\tvsphere-agent\nVmHWM:\t   32396 kB\nVmRSS:\t   19028 kB\nRssAnon:\t    5904 kB\nRssFile:\t   13124 kB\nRssShmem:\t       0 kB\n"
        #expect(ProcessMemory.parseStatus(text) == .init(total: 19028, anonymous: 5904, file: 13124, peak: 32396))
        #expect(ProcessMemory.parseStatus("VmRSS:\t1 kB\n") == nil)
        let mine = try #require(ProcessMemory.resident())
        #expect(mine.total > 0 && mine.anonymous > 0 && mine.file > 0 && mine.anonymous + mine.file <= mine.total)
        #expect(mine.peak >= mine.total)
        let pss = try #require(mine.proportional)
        #expect(pss > 0 && pss <= mine.total)
    }
}
