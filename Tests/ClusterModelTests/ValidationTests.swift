import ClusterModel
import Foundation
import Testing

@Suite struct VMSpecValidation {
    func problems(_ json: String) -> [String] {
        do {
            _ = try VMSpec.decodeValidated(Data(json.utf8), prefix: "vms[2]")
            return []
        } catch {
            return error.problems.map(\.description)
        }
    }

    @Test func validSpecPasses() {
        #expect(problems(#"{"name":"web1","cpus":2,"memoryMiB":256,"boot":{"kernel":"/k"},"resources":{"cpu":{"shares":"high"}}}"#) == [])
    }

    @Test func boundsNameTheirPath() {
        #expect(problems(#"{"name":"web1","cpus":1,"memoryMiB":8}"#) == ["vms[2].memoryMiB: must be at least 16"])
        #expect(problems(#"{"name":"web1","cpus":0,"memoryMiB":64}"#) == ["vms[2].cpus: must be between 1 and 512"])
    }

    @Test func wrongTypesAndMissingFields() {
        #expect(problems(#"{"name":"web1","cpus":"two","memoryMiB":64}"#) == ["vms[2].cpus: must be an integer"])
        #expect(problems(#"{"name":"web1","memoryMiB":64}"#) == ["vms[2].cpus: is required"])
        #expect(problems(#"{"name":"web1","cpus":1,"memoryMiB":64,"disks":[{"path":7}]}"#) == ["vms[2].disks[0].path: must be a string"])
    }

    @Test func unknownFieldsAreReported() {
        #expect(problems(#"{"name":"web1","cpus":1,"memoryMiB":64,"cpu":4,"nics":[{"bridge":"br0","vlan":3}]}"#) == [
            "vms[2].cpu: unknown field", "vms[2].nics[0].vlan: unknown field",
        ])
    }

    @Test func everyProblemAtOnce() {
        let p = problems(#"{"name":"Web_1","cpus":3,"memoryMiB":64,"topology":{"sockets":1,"cores":2,"threads":1},"boot":{"kernel":"relative/k","cmdline":"a\u0001"},"disks":[{"path":"/a/../b","format":"vmdk"}],"nics":[{"mac":"01:00:5e:00:00:01"}],"resources":{"cpu":{"reservationMHz":100,"limitMHz":50},"memory":{"reservationMiB":128}}}"#)
        #expect(p == [
            "vms[2].name: must match ^[a-z][a-z0-9-]{0,62}$",
            "vms[2].topology: sockets x cores x threads must equal cpus (3)",
            "vms[2].boot.kernel: must be an absolute path",
            "vms[2].boot.cmdline: must be at most 4096 bytes without control characters",
            "vms[2].disks[0].path: must be an absolute path",
            "vms[2].disks[0].format: must be qcow2 or raw",
            "vms[2].nics[0]: needs a network (manifest level) or a bridge (host level)",
            "vms[2].nics[0].mac: must be a unicast MAC address like 52:54:00:12:34:56",
            "vms[2].resources.cpu.limitMHz: must not be below reservationMHz (100)",
            "vms[2].resources.memory.reservationMiB: must not exceed memoryMiB (64)",
        ])
    }

    @Test func sharesAcceptNamesAndNumbers() {
        #expect(problems(#"{"name":"a","cpus":1,"memoryMiB":64,"resources":{"cpu":{"shares":1500},"memory":{"shares":"low"}}}"#) == [])
        #expect(problems(#"{"name":"a","cpus":1,"memoryMiB":64,"resources":{"cpu":{"shares":"huge"}}}"#) == [
            "vms[2].resources.cpu.shares: must be low, normal, high or a number",
        ])
    }

    @Test func notJSON() {
        #expect(problems("{") == ["vms[2]: not valid JSON"])
    }

    @Test(arguments: ["a", "web-1", String(repeating: "a", count: 63)])
    func goodNames(_ n: String) { #expect(Names.isValid(n)) }

    @Test(arguments: ["", "1a", "-a", "A", "a_b", "a.b", String(repeating: "a", count: 64), "a b", "ä"])
    func badNames(_ n: String) { #expect(!Names.isValid(n)) }
}
