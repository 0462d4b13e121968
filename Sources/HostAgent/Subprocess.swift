import Foundation
import Libvirt

/// Runs a program with an argument vector (never a shell) and collects its output. Used for qemu-img.
/// posix_spawn on a pool thread: Foundation's Process waits poorly under Swift concurrency.
enum Subprocess {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static func run(_ program: String, _ arguments: [String]) async throws -> String {
        try await Libvirt.offload { try runBlocking(program, arguments) }
    }

    static func runBlocking(_ program: String, _ arguments: [String]) throws -> String {
        var out: [Int32] = [0, 0]
        guard pipe(&out) == 0 else { throw Failure(description: "pipe: \(String(cString: strerror(errno)))") }
        var actions: posix_spawn_file_actions_t = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, out[1], 1)
        posix_spawn_file_actions_adddup2(&actions, out[1], 2)
        posix_spawn_file_actions_addclose(&actions, out[0])
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        // Service lifecycle's signal handling blocks signals in our threads; children start with none blocked.
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
        let rc = posix_spawnp(&pid, program, &actions, &attr, argv, environ)
        close(out[1])
        guard rc == 0 else {
            close(out[0])
            throw Failure(description: "\(program): \(String(cString: strerror(rc)))")
        }
        var data = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(out[0], &buf, buf.count)
            if n <= 0 { break }
            data.append(buf, count: n)
        }
        close(out[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let text = String(decoding: data, as: UTF8.self)
        let exited = status & 0x7f == 0
        let code = (status >> 8) & 0xff
        guard exited && code == 0 else {
            throw Failure(description: "\(program) \(arguments.first ?? "") failed (\(exited ? "exit \(code)" : "signal \(status & 0x7f)")): \(text.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return text
    }
}
