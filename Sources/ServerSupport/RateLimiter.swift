import Synchronization

/// A token bucket per key (a client's address): `rate` requests a second on average, bursts of up to
/// `burst`. Routes anyone may call without credentials (joining, the CA, health) and failed sign-ins
/// go through it, so that no client can make the server hash, log or store without bound.
public final class RateLimiter: Sendable {
    public let rate: Double
    public let burst: Double
    /// At most this many keys are remembered; past it, full buckets are forgotten first.
    public let maxKeys: Int
    private let buckets = Mutex<[String: (tokens: Double, at: ContinuousClock.Instant)]>([:])

    public init(rate: Double, burst: Double, maxKeys: Int = 10_000) {
        self.rate = rate
        self.burst = burst
        self.maxKeys = maxKeys
    }

    /// How many clients' buckets are remembered.
    public var trackedKeys: Int { buckets.withLock { $0.count } }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    /// Takes a token for `key`; false when its bucket is empty.
    public func allow(_ key: String, now: ContinuousClock.Instant = .now) -> Bool {
        buckets.withLock { b in
            var entry = b[key] ?? (burst, now)
            entry.tokens = min(burst, entry.tokens + max(0, Self.seconds(now - entry.at)) * rate)
            entry.at = now
            let allowed = entry.tokens >= 1
            if allowed { entry.tokens -= 1 }
            b[key] = entry
            if b.count > maxKeys {
                // Forget the buckets that have refilled by now (they behave as new ones), then the fullest.
                b = b.filter { k, v in k == key || Self.seconds(now - v.at) + v.tokens / rate < burst / rate }
                while b.count > maxKeys, let fullest = b.filter({ $0.key != key }).max(by: { $0.value.tokens < $1.value.tokens })?.key {
                    b[fullest] = nil
                }
            }
            return allowed
        }
    }
}

/// At most `perMinute` records a minute of something anyone can cause (refused anonymous calls,
/// refused joins): the rest are counted, and the count is handed to the first record of the next
/// minute, so a flood is seen without growing a table by its size.
public final class MinuteBudget: Sendable {
    public let perMinute: Int
    private let window = Mutex<(start: ContinuousClock.Instant, written: Int, suppressed: Int)>((.now, 0, 0))

    public init(perMinute: Int) { self.perMinute = perMinute }

    /// Whether to record this one, and how many went unrecorded in the minute before.
    public func take(now: ContinuousClock.Instant = .now) -> (record: Bool, suppressedBefore: Int) {
        window.withLock { w in
            var carried = 0
            if now - w.start >= .seconds(60) {
                carried = w.suppressed
                w = (now, 0, 0)
            }
            if w.written < perMinute {
                w.written += 1
                return (true, carried)
            }
            w.suppressed += 1
            return (false, carried)
        }
    }
}
