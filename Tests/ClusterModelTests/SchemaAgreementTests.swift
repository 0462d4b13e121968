import ClusterModel
import Foundation
import Testing

/// Every example validates against Schemas/cluster.schema.json (python3-jsonschema) and the Swift
/// decoder accepts it; every bad fixture is refused by both.
@Suite struct SchemaAgreement {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func files(_ dir: String) -> [String] {
        let url = root.appendingPathComponent(dir)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: url.path)) ?? []
        return names.filter { $0.hasSuffix(".json") }.sorted().map { url.appendingPathComponent($0).path }
    }

    /// Runs the schema checker on `paths`; returns path → valid.
    static func jsonschema(_ paths: [String]) throws -> [String: Bool] {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("vs-schema-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: out) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, out.path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let args = ["python3", root.appendingPathComponent("scripts/check-schema.py").path,
                    root.appendingPathComponent("Schemas/cluster.schema.json").path] + paths
        let argv = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        guard posix_spawnp(&pid, "python3", &actions, nil, argv, environ) == 0 else { throw CocoaError(.executableLoad) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        #expect(status == 0, "check-schema.py failed (is python3-jsonschema installed?)")
        var result: [String: Bool] = [:]
        for line in try String(contentsOf: out, encoding: .utf8).split(separator: "\n") {
            let parts = line.split(separator: "\t")
            if parts.count >= 2 { result[String(parts[0])] = parts[1] == "valid" }
        }
        return result
    }

    @Test func examplesAreValidForBoth() throws {
        let examples = Self.files("examples")
        #expect(examples.count >= 2)
        let verdicts = try Self.jsonschema(examples)
        for path in examples {
            #expect(verdicts[path] == true, "\(path) fails the JSON schema")
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            do {
                _ = try ClusterManifest.decodeValidated(data)
            } catch {
                Issue.record("\(path): \(error.problems.map(\.description).joined(separator: "; "))")
            }
        }
    }

    @Test func badDocumentsAreRefusedByBoth() throws {
        let bad = Self.files("Tests/ClusterModelTests/Fixtures/bad")
        #expect(bad.count >= 8)
        let verdicts = try Self.jsonschema(bad)
        for path in bad {
            #expect(verdicts[path] == false, "\(path) passes the JSON schema")
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            #expect(throws: ValidationFailure.self, "\(path) passes the Swift validator") {
                try ClusterManifest.decodeValidated(data)
            }
        }
    }

    @Test func hostExamplesAreAgentSpecs() throws {
        let data = try Data(contentsOf: Self.root.appendingPathComponent("examples/host/vm-web1.json"))
        _ = try VMSpec.decodeValidated(data)
    }
}
