import Foundation
import Spawn
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
        let rc = Spawn.withCleanAttributes { attr in posix_spawnp(&pid, program, &actions, &attr, argv, environ) }
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
