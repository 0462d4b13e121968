import Logging
import ServiceLifecycle
import SystemFiles

/// Keeps the agent's resident set to what it uses: a minute after start (start-up's pages, and the
/// libraries' initialisation, are behind it by then) and every `workingSetTrimSeconds` after, it drops
/// the clean file pages of its code and read-only data from its page tables (`WorkingSet.trim`). What
/// the agent runs next faults its pages back from the page cache.
public struct WorkingSetTrimmer: Service {
    let interval: Duration
    let firstAfter: Duration
    let logger: Logger

    public init(intervalSeconds: Int, firstAfter: Duration = .seconds(60), logger: Logger) {
        interval = .seconds(intervalSeconds)
        self.firstAfter = firstAfter
        self.logger = logger
    }

    public func run() async throws {
        var wait = firstAfter
        var first = true
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let pause = wait
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: pause) }
            if Task.isCancelled || Task.isShuttingDownGracefully { return }
            let t = WorkingSet.trim()
            let metadata: Logger.Metadata = [
                "residentKiB": "\(t.before?.total ?? 0) -> \(t.after?.total ?? 0)",
                "fileKiB": "\(t.before?.file ?? 0) -> \(t.after?.file ?? 0)",
                "anonymousKiB": "\(t.before?.anonymous ?? 0) -> \(t.after?.anonymous ?? 0)",
                "ranges": "\(t.ranges)",
            ]
            if first { logger.info("resident set trimmed", metadata: metadata) } else { logger.debug("resident set trimmed", metadata: metadata) }
            first = false
            wait = interval
        }
    }
}
