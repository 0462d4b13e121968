import FoundationEssentials
import Glibc
import HostAgent
import Testing

@Suite struct AgentConfigTests {
    func load(_ json: String) throws -> AgentConfig {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("agent-config-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).json").path
        try json.write(toFile: path, atomically: false, encoding: .utf8)
        defer { unlink(path) }
        return try AgentConfig.load(path: path)
    }

    func problem(_ json: String) -> String? {
        do {
            _ = try load(json)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func unknownAndMistypedFieldsAreNamed() throws {
        #expect(problem(#"{"uplinc":"eth0"}"#)?.hasSuffix("uplinc: unknown field") == true)
        #expect(problem(#"{"coreParkingIntervalSeconds":"often"}"#)?.hasSuffix("coreParkingIntervalSeconds: wrong type") == true)
    }
}
