import ClusterModel
import Foundation
import Testing

@Suite struct ManifestValidation {
    func problems(_ json: String) -> [String] {
        do {
            _ = try ClusterManifest.decodeValidated(Data(json.utf8))
            return []
        } catch {
            return error.problems.map(\.description)
        }
    }

    func doc(_ body: String) -> String { #"{"apiVersion":"vsphere/v1","kind":"Cluster","# + body + "}" }

    @Test func contractExampleIsValid() {
        let json = doc(#"""
            "metadata":{"name":"lab"},"sites":[{"name":"dc1"}],
            "hosts":[{"name":"h1","site":"dc1","agent":"https://10.250.1.1:7443","power":{"driver":"ipmi","address":"10.0.0.5","username":"admin"}}],
            "storagePools":[{"name":"local","type":"dir","path":"/var/lib/vsphere/pools/local"}],
            "networks":[{"name":"prod","type":"bridge","vlan":100}],
            "resourcePools":[{"name":"gold","parent":null,"cpu":{"reservationMHz":0,"shares":"high","limitMHz":null},"memory":{"reservationMiB":0,"shares":"normal","limitMiB":null}}],
            "vms":[{"name":"web1","cpus":1,"memoryMiB":256,"resourcePool":"gold","boot":{"kernel":"/k","initrd":"/i","cmdline":"c"},
                    "disks":[{"pool":"local","sizeGiB":1,"from":"image.qcow2"}],"nics":[{"network":"prod"}],
                    "placement":{"site":"dc1","hosts":["h1"],"antiAffinity":["web2"],"affinity":[]},"powerState":"running"},
                   {"name":"web2","cpus":1,"memoryMiB":256}]
            """#)
        #expect(problems(json) == [])
    }

    @Test func drsAndDPMSettings() {
        #expect(problems(doc(#""settings":{"drs":{"automation":"fullyAutomated","migrationThreshold":5,"minGain":0.02},"dpm":{"automation":"automated","targetUtilization":63,"tolerance":18,"spareHosts":1}}"#)) == [])
        #expect(problems(doc(#""settings":{"drs":{"automation":"auto","migrationThreshold":6,"minGain":0,"maxMoves":0},"dpm":{"automation":"on","targetUtilization":90,"tolerance":20,"spareHosts":-1,"colour":1}}"#)) == [
            "settings.dpm.colour: unknown field",
        ])
        #expect(problems(doc(#""settings":{"drs":{"automation":"auto","migrationThreshold":6,"minGain":0,"maxMoves":0},"dpm":{"automation":"on","targetUtilization":90,"tolerance":20,"spareHosts":-1}}"#)) == [
            "settings.drs.automation: must be manual, partiallyAutomated or fullyAutomated",
            "settings.drs.migrationThreshold: must be between 1 and 5",
            "settings.drs.minGain: must be above 0 and at most 1",
            "settings.drs.maxMoves: must be between 1 and 1000",
            "settings.dpm.automation: must be off, manual or automated",
            "settings.dpm.tolerance: target + tolerance must be at most 100",
            "settings.dpm.spareHosts: must be between 0 and 1000",
        ])
        #expect(problems(doc(#""hosts":[{"name":"h1","power":{"driver":"wol","mac":"52:54:00:ab:cd:ef","port":"99999","broadcast":"10.0.0"}},{"name":"h2","power":{"driver":"testbed","host":"-x"}}]"#)) == [
            "hosts[0].power.port: must be a UDP port (1-65535)",
            "hosts[0].power.broadcast: must be an IPv4 address",
            "hosts[1].power.host: must be non-empty and must not start with '-'",
        ])
    }

    @Test func everyShapeProblemAtOnce() {
        let json = doc(#""hosts":[{"name":"h1","cpus":4}],"vms":[{"name":"a","cpus":"1","memoryMiB":256},{"name":"b","cpus":1,"memoryMiB":true,"color":1}]"#)
        #expect(problems(json) == [
            "hosts[0].cpus: unknown field",
            "vms[0].cpus: must be an integer",
            "vms[1].color: unknown field",
            "vms[1].memoryMiB: must be an integer",
        ])
    }

    @Test func boundsNamesDuplicatesReferences() {
        let json = doc(#"""
            "sites":[{"name":"dc1"}],
            "hosts":[{"name":"h1","site":"dc9","agent":"http://x"},{"name":"h1"}],
            "networks":[{"name":"n1","vlan":5000}],
            "vms":[{"name":"Web","cpus":1,"memoryMiB":8},{"name":"v2","cpus":1,"memoryMiB":64,"nics":[{"network":"nope"}],
                    "placement":{"antiAffinity":["v2","elsewhere","Bad_Name"],"site":"dc2"}}]
            """#)
        #expect(problems(json) == [
            "hosts[1].name: duplicate name h1 (also hosts[0])",
            "vms[0].name: must match ^[a-z][a-z0-9-]{0,62}$",
            "hosts[0].site: no site named dc9 in this document",
            "hosts[0].agent: must be an https:// URL",
            "networks[0].vlan: must be between 1 and 4094",
            "vms[0].name: must match ^[a-z][a-z0-9-]{0,62}$",
            "vms[0].memoryMiB: must be at least 16",
            "vms[1].nics[0].network: no network named nope in this document",
            "vms[1].placement.site: no site named dc2 in this document",
            "vms[1].placement.antiAffinity[0]: a VM cannot be kept apart from itself",
            "vms[1].placement.antiAffinity[2]: must match ^[a-z][a-z0-9-]{0,62}$",
        ])
    }

    @Test func referencesIntoAbsentSectionsAreLeftToTheController() {
        #expect(problems(doc(#""vms":[{"name":"a","cpus":1,"memoryMiB":64,"nics":[{"network":"prod"}],"resourcePool":"gold"}]"#)) == [])
    }

    @Test func resourcePoolCycles() {
        let json = doc(#""resourcePools":[{"name":"a","parent":"b"},{"name":"b","parent":"c"},{"name":"c","parent":"a"},{"name":"d","parent":"d"}]"#)
        #expect(problems(json) == [
            "resourcePools[3].parent: a pool cannot be its own parent",
            "resourcePools[0].parent: parents form a cycle: a -> b -> c -> a",
            "resourcePools[3].parent: parents form a cycle: d -> d",
        ])
    }

    @Test func limitBelowReservation() {
        let json = doc(#""resourcePools":[{"name":"a","cpu":{"reservationMHz":500,"limitMHz":100},"memory":{"reservationMiB":512,"limitMiB":256}}]"#)
        #expect(problems(json) == [
            "resourcePools[0].cpu.limitMHz: must not be below reservationMHz (500)",
            "resourcePools[0].memory.limitMiB: must not be below reservationMiB (512)",
        ])
    }

    @Test func admissionControl() {
        let json = doc(#"""
            "hosts":[{"name":"h1","capacity":{"cpus":2,"memoryMiB":4096}}],
            "resourcePools":[
              {"name":"root","memory":{"reservationMiB":1024,"limitMiB":3000}},
              {"name":"fixed","parent":"root","memory":{"reservationMiB":512,"expandable":false}},
              {"name":"big","parent":"root","memory":{"reservationMiB":2048}}],
            "vms":[{"name":"v1","cpus":1,"memoryMiB":1024,"resourcePool":"fixed","resources":{"memory":{"reservationMiB":1000}}},
                   {"name":"v2","cpus":1,"memoryMiB":2048,"resources":{"memory":{"reservationMiB":2000}}}]
            """#)
        #expect(problems(json) == [
            "resourcePools[1].memory.reservationMiB: children reserve 1000 MiB, more than this pool's 512 MiB (not expandable)",
            "resourcePools: reservations take 4560 MiB, more than the cluster's 4096 MiB",
        ])
        let tight = json.replacingOccurrences(of: #""limitMiB":3000"#, with: #""limitMiB":2000"#)
        #expect(problems(tight).contains(
            "resourcePools[0].memory.limitMiB: reservations below this pool take 2560 MiB, above its limit of 2000 MiB"))
    }
}
