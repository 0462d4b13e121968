import AgentAPI
import HostAgent
import Testing

@Suite struct EventHubTests {
    /// Held events after `since` first, then new ones, with no heartbeat unless one is asked for.
    @Test func replaysThenFollows() async {
        let hub = EventHub(firstSeq: 1)
        hub.publish(kind: "a")
        hub.publish(kind: "b")
        var it = hub.subscribe(since: 1).makeAsyncIterator()
        hub.publish(kind: "c")
        hub.closeAll()
        var seen: [String] = []
        while let item = await it.next() { seen.append(item.map { "\($0.seq):\($0.kind)" } ?? "nil") }
        #expect(seen == ["2:b", "3:c"])
    }

    /// A quiet stream with a heartbeat carries nils, between the events, in the same stream; closing the
    /// hub ends it.
    @Test func heartbeatsInterleaveWithEvents() async {
        let hub = EventHub(firstSeq: 1)
        var it = hub.subscribe(since: nil, heartbeat: .milliseconds(5)).makeAsyncIterator()
        #expect(await it.next() == .some(nil))
        hub.publish(kind: "a")
        var event: AgentEvent? = nil
        while event == nil, let item = await it.next() { event = item }
        #expect(event?.kind == "a")
        #expect(await it.next() == .some(nil))
        hub.closeAll()
        while let _ = await it.next() {}
    }

    /// A hub closed before the subscription gives the held events and ends.
    @Test func closedHubEnds() async {
        let hub = EventHub(firstSeq: 1)
        hub.publish(kind: "a")
        hub.closeAll()
        var it = hub.subscribe(since: 0, heartbeat: .milliseconds(1)).makeAsyncIterator()
        #expect(await it.next()??.kind == "a")
        #expect(await it.next() == nil)
    }
}
