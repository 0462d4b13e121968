import ClusterModel
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// posix_spawn attributes for a child that starts clean: no signal blocked and the usual signals at
/// their default action. Swift services and test runners block signals in their threads (for their
/// own signal handling) and children inherit the mask: a daemon started that way would ignore SIGTERM.
public enum Spawn {
    public static func withCleanAttributes<T>(_ body: (inout posix_spawnattr_t) throws -> T) rethrows -> T {
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGPIPE, SIGCHLD, SIGUSR1, SIGUSR2, SIGALRM] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        return try body(&attr)
    }
}

extension Spawn {
    public typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    /// glibc's posix_spawn_file_actions_addclosefrom_np (2.34+), which Swift's Glibc module does not
    /// export.
    public static let addCloseFrom: CloseFrom? = {
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(sym, to: CloseFrom.self)
    }()

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
        /// The exit status, when the program ran and exited.
        public var status: Int32?
    }

    /// Runs a program with an argument vector (never through a shell unless the caller names one),
    /// stdin from /dev/null, stdout and stderr collected together; blocks until it exits. `environment`
    /// entries are added to this process's environment. Throws unless it exits 0 (within `timeoutSeconds`,
    /// when given: it is killed after that).
    public static func run(_ program: String, _ arguments: [String], environment: [String: String] = [:], timeoutSeconds: Double? = nil) throws -> String {
        var out: [Int32] = [0, 0]
        // Close-on-exec: only the dup2'ed stdout/stderr reach the child, so a daemon it leaves behind
        // cannot hold the pipe open.
        guard pipe(&out) == 0 else { throw Failure(description: "pipe: \(String(cString: strerror(errno)))") }
        for fd in out { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, out[1], 1)
        posix_spawn_file_actions_adddup2(&actions, out[1], 2)
        posix_spawn_file_actions_addclose(&actions, out[0])
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        // Nothing else of ours: a daemon the child leaves behind must not hold our sockets (a listening
        // port the next server on it needs) or pipes.
        if let closeFrom = Self.addCloseFrom { _ = closeFrom(&actions, 3) }
        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { envp.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = withCleanAttributes { attr in posix_spawnp(&pid, program, &actions, &attr, argv, envp) }
        close(out[1])
        guard rc == 0 else {
            close(out[0])
            throw Failure(description: "\(program): \(String(cString: strerror(rc)))")
        }
        // Read until the child exits (not until EOF: a daemon it started may keep its output open), or
        // until the deadline, when it is killed.
        _ = fcntl(out[0], F_SETFL, fcntl(out[0], F_GETFL) | O_NONBLOCK)
        var data = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        let deadline = timeoutSeconds.map { Date().addingTimeInterval($0) }
        var status: Int32 = 0
        var timedOut = false
        func drain() -> Bool {
            while true {
                let n = read(out[0], &buf, buf.count)
                if n > 0 { data.append(buf, count: n); continue }
                return n == 0  // EOF
            }
        }
        while true {
            var p = pollfd(fd: out[0], events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, 100)
            let eof = drain()
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if eof {
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                break
            }
            if let deadline, Date() > deadline {
                kill(pid, SIGKILL)
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                timedOut = true
                break
            }
        }
        _ = drain()
        close(out[0])
        if timedOut {
            throw Failure(description: "\(program) \(arguments.first ?? "") did not finish within \(Int(timeoutSeconds ?? 0)) s (killed)", status: nil)
        }
        let text = String(decoding: data, as: UTF8.self)
        let exited = status & 0x7f == 0
        let code = (status >> 8) & 0xff
        guard exited && code == 0 else {
            throw Failure(
                description: "\(program) \(arguments.first ?? "") failed (\(exited ? "exit \(code)" : "signal \(status & 0x7f)")): \(text.trimmed)",
                status: exited ? code : nil)
        }
        return text
    }
}
