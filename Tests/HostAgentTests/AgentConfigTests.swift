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

    @Test func workingSetTrimIntervalIsChecked() throws {
        #expect(try load("{}").workingSetTrimSeconds == 600)
        #expect(try load(#"{"workingSetTrimSeconds":0}"#).workingSetTrimSeconds == 0)
        #expect(try load(#"{"workingSetTrimSeconds":3600}"#).workingSetTrimSeconds == 3600)
        for bad in ["30", "-1", "86401"] {
            #expect(problem(#"{"workingSetTrimSeconds":\#(bad)}"#) == "workingSetTrimSeconds: must be 0 (never) or between 60 and 86400")
        }
        #expect(problem(#"{"workingSetTrimSecs":600}"#)?.hasSuffix("workingSetTrimSecs: unknown field") == true)
        #expect(problem(#"{"workingSetTrimSeconds":"often"}"#)?.hasSuffix("workingSetTrimSeconds: wrong type") == true)
    }
}
