import DomainXML
import HostAgent
import Testing

@Suite struct ParkingPolicyTests {
    let p = ParkingPolicy(targetUtilization: 0.5, shrinkAfter: 3)

    @Test func growsAtOnceShrinksAfterAStreak() {
        // Idle host with 8 guest CPUs: one stays active, but only after three low passes.
        var (n, streak) = p.next(busyCores: 0.1, available: 8, current: 8, lowStreak: 0)
        #expect(n == 8 && streak == 1)
        (n, streak) = p.next(busyCores: 0.1, available: 8, current: n, lowStreak: streak)
        #expect(n == 8 && streak == 2)
        (n, streak) = p.next(busyCores: 0.1, available: 8, current: n, lowStreak: streak)
        #expect(n == 1 && streak == 0)
        // 1.2 cores busy at 50 % target: three CPUs, at once.
        (n, streak) = p.next(busyCores: 1.2, available: 8, current: n, lowStreak: streak)
        #expect(n == 3 && streak == 0)
        // Never more than there are, never fewer than one.
        #expect(p.next(busyCores: 100, available: 8, current: 3, lowStreak: 0).active == 8)
        #expect(p.next(busyCores: 0, available: 8, current: 1, lowStreak: 5).active == 1)
    }

    @Test(arguments: 0..<200)
    func activeStaysWithinBoundsAndCoversTheLoad(seed: Int) {
        var x = UInt64(seed) &* 0x9E37_79B9_7F4A_7C15 &+ 1
        func next() -> Double { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return Double(x % 10_000) / 1000 }
        var current = 8, streak = 0
        for _ in 0..<50 {
            let busy = next()
            let r = p.next(busyCores: busy, available: 8, current: current, lowStreak: streak)
            #expect(r.active >= 1 && r.active <= 8)
            // Enough CPUs for the load at the target (or all of them), whatever the streak.
            #expect(Double(r.active) * 0.5 >= min(busy, 4) - 1e-9 || r.active == 8)
            current = r.active
            streak = r.lowStreak
        }
    }

    @Test func cpuLists() {
        #expect(CPUList.parse("0-3,6,8-9") == [0, 1, 2, 3, 6, 8, 9])
        #expect(CPUList.format([9, 0, 1, 2, 3, 6, 8]) == "0-3,6,8-9")
        for bad in ["", "a", "3-1", "1,,2", "-1", "1-"] { #expect(CPUList.parse(bad) == nil, "\(bad)") }
    }
}
