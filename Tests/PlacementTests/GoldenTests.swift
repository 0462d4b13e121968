import ClusterModel
import Foundation
import Placement
import Testing

/// Checked-in clusters with the placements worked out by hand (see each file's expected block).
@Suite struct GoldenFixtures {
    struct Fixture: Decodable {
        var cluster: ClusterManifest
        var expected: Expected
        struct Expected: Decodable {
            var placements: [String: String?]
            var unplacedFilters: [String: [String]]
        }
    }

    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

    static var names: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).filter { $0.hasSuffix(".json") }.sorted()
    }

    @Test(arguments: names)
    func placementMatches(_ file: String) throws {
        let data = try Data(contentsOf: Self.dir.appendingPathComponent(file))
        let fixture = try JSONDecoder().decode(Fixture.self, from: data)
        #expect(fixture.cluster.validate().isEmpty)
        let (state, _, pending) = ClusterSnapshot.state(fixture.cluster)
        let result = Scheduler(strategy: ClusterSnapshot.strategy(fixture.cluster)).place(Scheduler.ordered(pending), on: state)
        var got: [String: String?] = [:]
        for p in result.placements { got[p.vm] = .some(p.host) }
        for u in result.unplaced { got[u.vm] = .some(nil) }
        #expect(got == fixture.expected.placements, "\(file)")
        let filters = Dictionary(uniqueKeysWithValues: result.unplaced.map { ($0.vm, $0.reasons.map(\.filter)) })
        #expect(filters == fixture.expected.unplacedFilters, "\(file)")
    }

    @Test func fixturesExist() { #expect(Self.names.count >= 2) }
}
