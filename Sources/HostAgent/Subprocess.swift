import FoundationEssentials
import Glibc
import Libvirt
import Spawn

/// Runs a program with an argument vector (never a shell) and collects its output. Used for qemu-img.
/// posix_spawn on a pool thread: Foundation's Process waits poorly under Swift concurrency.
enum Subprocess {
    static func run(_ program: String, _ arguments: [String]) async throws -> String {
        try await Libvirt.offload { try runBlocking(program, arguments) }
    }

    static func runBlocking(_ program: String, _ arguments: [String]) throws -> String {
        try Spawn.run(program, arguments)
    }
}
