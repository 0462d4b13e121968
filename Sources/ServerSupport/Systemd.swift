import Logging
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// The daemons under systemd: readiness and watchdog over sd_notify's datagram socket ($NOTIFY_SOCKET,
/// `Type=notify`, `WatchdogSec=`), and log lines journald files under their priority. Outside systemd
/// (no such variables) all of it does nothing.
public enum Systemd {
    /// Sends a state (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=...`) to systemd; false when not
    /// run by it or when the send failed.
    @discardableResult
    public static func notify(_ state: String, environment: [String: String] = Self.environment) -> Bool {
        guard let path = environment["NOTIFY_SOCKET"], !path.isEmpty, path.utf8.count < 108 else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        // An abstract socket is named with a leading @, which stands for a NUL byte.
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            for (i, b) in bytes.enumerated() { dst[i] = b }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let message = Array(state.utf8)
        let sent = withUnsafePointer(to: &addr) { a in
            a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                message.withUnsafeBytes { sendto(fd, $0.baseAddress, message.count, Int32(MSG_NOSIGNAL), sa, length) }
            }
        }
        return sent == message.count
    }

    /// Half the watchdog's timeout when systemd watches this process (`WatchdogSec=`), else nil.
    public static func watchdogInterval(environment: [String: String] = Self.environment) -> Duration? {
        guard let usec = environment["WATCHDOG_USEC"].flatMap(Int64.init), usec > 0 else { return nil }
        if let pid = environment["WATCHDOG_PID"].flatMap(Int32.init), pid != getpid() { return nil }
        return .microseconds(usec / 2)
    }

    /// Whether standard error goes to the journal (systemd sets JOURNAL_STREAM to its device:inode).
    public static func stderrIsJournal(environment: [String: String] = Self.environment) -> Bool {
        guard let stream = environment["JOURNAL_STREAM"] else { return false }
        var st = stat()
        guard fstat(2, &st) == 0 else { return false }
        return stream == "\(st.st_dev):\(st.st_ino)"
    }

    public static var environment: [String: String] {
        var out: [String: String] = [:]
        for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"] {
            if let v = getenv(key) { out[key] = String(cString: v) }
        }
        return out
    }

    /// The sd-daemon prefix journald reads a line's priority from (`<3>` error ... `<7>` debug).
    public static func priorityPrefix(_ level: Logger.Level) -> String {
        switch level {
        case .critical: "<2>"
        case .error: "<3>"
        case .warning: "<4>"
        case .notice: "<5>"
        case .info: "<6>"
        case .debug, .trace: "<7>"
        }
    }
}

/// Tells systemd the daemon is ready once `ready` returns (its HTTPS server listens), pets the watchdog
/// while the process runs, and says it is stopping at shutdown.
public struct SystemdNotifier: Service {
    let ready: @Sendable () async -> Void
    let logger: Logger

    public init(logger: Logger, ready: @escaping @Sendable () async -> Void) {
        self.ready = ready
        self.logger = logger
    }

    public func run() async throws {
        await ready()
        if Systemd.notify("READY=1\nSTATUS=serving") { logger.info("told systemd: ready") }
        guard let interval = Systemd.watchdogInterval() else {
            try? await gracefulShutdown()
            Systemd.notify("STOPPING=1")
            return
        }
        // The watchdog is petted from a task of the runtime's pool: a process whose executor stalls stops
        // petting, and systemd restarts it.
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                Systemd.notify("WATCHDOG=1")
                try? await Task.sleep(for: interval)
            }
        }
        Systemd.notify("STOPPING=1")
    }
}

/// A signal set once: the HTTPS server's "listening" reaches the notifier through it.
public final class Readiness: Sendable {
    private let stream: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    public init() { (stream, continuation) = AsyncStream<Void>.makeStream() }

    public func signal() {
        continuation.yield()
        continuation.finish()
    }

    public func wait() async { for await _ in stream { break } }
}

/// swift-log's stream handler, with journald's priority prefix on each line when standard error is
/// the journal (`journalctl -p err` then finds the errors).
public struct DaemonLogHandler: LogHandler {
    var inner: StreamLogHandler
    let journal: Bool

    public init(label: String, journal: Bool = Systemd.stderrIsJournal()) {
        inner = StreamLogHandler.standardError(label: label)
        self.journal = journal
    }

    public var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }

    public var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    public func log(
        level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String, function: String, line: UInt
    ) {
        guard journal else {
            return inner.log(level: level, message: message, metadata: metadata, source: source, file: file, function: function, line: line)
        }
        // The journal stamps time and unit itself: priority, level and message, one line.
        var text = "\(Systemd.priorityPrefix(level))\(level): \(message)"
        let all = inner.metadata.merging(metadata ?? [:]) { $1 }
        if !all.isEmpty { text += " " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ") }
        let bytes = Array((text.replacingNewlines() + "\n").utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

extension String {
    func replacingNewlines() -> String {
        String(self.map { $0 == "\n" ? " " : $0 })
    }
}
