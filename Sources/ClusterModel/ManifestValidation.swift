import FoundationEssentials

extension ClusterManifest {
    /// Parses, checks the shape (every unknown field and wrong type) and then the meaning of a cluster
    /// document; throws every problem found, each with its JSON path.
    public static func decodeValidated(_ data: Data) throws(ValidationFailure) -> ClusterManifest {
        guard let shapeProblems = Shape.manifest.problems(in: data, prefix: "") else {
            throw ValidationFailure([ValidationProblem("", "not valid JSON")])
        }
        if !shapeProblems.isEmpty { throw ValidationFailure(shapeProblems) }
        let manifest: ClusterManifest
        do {
            manifest = try JSONDecoder().decode(ClusterManifest.self, from: data)
        } catch let error as DecodingError {
            throw ValidationFailure([problem(from: error, prefix: "")])
        } catch {
            throw ValidationFailure([ValidationProblem("", "\(error)")])
        }
        let problems = manifest.validate()
        if !problems.isEmpty { throw ValidationFailure(problems) }
        return manifest
    }

    /// Meaning: names, duplicates, references, bounds, resource-pool cycles and admission control.
    /// A reference into a section the document does not have is left to the controller, which knows
    /// the merged state; a reference into a section the document has must resolve in it.
    public func validate() -> [ValidationProblem] {
        var out: [ValidationProblem] = []
        let nameRule = "must match ^[a-z][a-z0-9-]{0,62}$"
        if apiVersion != "vsphere/v1" { out.append(.init("apiVersion", "must be vsphere/v1")) }
        if kind != "Cluster" { out.append(.init("kind", "must be Cluster")) }
        if let m = metadata, !Names.isValid(m.name) { out.append(.init("metadata.name", nameRule)) }
        if let p = settings?.placement {
            if let s = p.strategy, s != "spread" && s != "pack" {
                out.append(.init("settings.placement.strategy", "must be spread or pack"))
            }
            if let c = p.cpuOvercommit, !(c > 0 && c <= 64) {
                out.append(.init("settings.placement.cpuOvercommit", "must be above 0 and at most 64"))
            }
            if let m = p.memoryOvercommit, !(m >= 1 && m <= 4) {
                out.append(.init("settings.placement.memoryOvercommit", "must be between 1 and 4"))
            }
        }
        if let m = settings?.migration {
            if let n = m.maxOutgoingPerHost, !(1...4).contains(n) {
                out.append(.init("settings.migration.maxOutgoingPerHost", "must be between 1 and 4"))
            }
            if let n = m.maxIncomingPerHost, !(1...4).contains(n) {
                out.append(.init("settings.migration.maxIncomingPerHost", "must be between 1 and 4"))
            }
            if let n = m.hostBandwidthMiBps, !(1...100_000).contains(n) {
                out.append(.init("settings.migration.hostBandwidthMiBps", "must be between 1 and 100000"))
            }
            if let p = m.defaultPolicy, !["minimal-downtime", "auto-converge", "post-copy", "suspend-if-needed"].contains(p) {
                out.append(.init("settings.migration.defaultPolicy", "must be minimal-downtime, auto-converge, post-copy or suspend-if-needed"))
            }
            if let t = m.transport, t != "tls" && t != "tcp" {
                out.append(.init("settings.migration.transport", "must be tls or tcp"))
            }
        }
        if let d = settings?.drs {
            let p = "settings.drs"
            if let a = d.automation, !["manual", "partiallyAutomated", "fullyAutomated"].contains(a) {
                out.append(.init("\(p).automation", "must be manual, partiallyAutomated or fullyAutomated"))
            }
            if let t = d.migrationThreshold, !(1...5).contains(t) { out.append(.init("\(p).migrationThreshold", "must be between 1 and 5")) }
            if let g = d.minGain, !(g > 0 && g <= 1) { out.append(.init("\(p).minGain", "must be above 0 and at most 1")) }
            if let m = d.maxMoves, !(1...1000).contains(m) { out.append(.init("\(p).maxMoves", "must be between 1 and 1000")) }
            if let i = d.intervalSeconds, !(1...86_400).contains(i) { out.append(.init("\(p).intervalSeconds", "must be between 1 and 86400")) }
            if let w = d.demandWindowSeconds, !(1...3600).contains(w) { out.append(.init("\(p).demandWindowSeconds", "must be between 1 and 3600")) }
        }
        if let d = settings?.dpm {
            let p = "settings.dpm"
            if let a = d.automation, !["off", "manual", "automated"].contains(a) {
                out.append(.init("\(p).automation", "must be off, manual or automated"))
            }
            if let t = d.targetUtilization, !(10...95).contains(t) { out.append(.init("\(p).targetUtilization", "must be between 10 and 95 (percent)")) }
            if let t = d.tolerance, !(1...40).contains(t) { out.append(.init("\(p).tolerance", "must be between 1 and 40 (percent)")) }
            if let t = d.targetUtilization, let tol = d.tolerance, t + tol > 100 {
                out.append(.init("\(p).tolerance", "target + tolerance must be at most 100"))
            }
            if let s = d.powerOnSustainSeconds, !(1...86_400).contains(s) { out.append(.init("\(p).powerOnSustainSeconds", "must be between 1 and 86400")) }
            if let s = d.powerOffSustainSeconds, !(1...86_400).contains(s) { out.append(.init("\(p).powerOffSustainSeconds", "must be between 1 and 86400")) }
            if let s = d.spareHosts, !(0...1000).contains(s) { out.append(.init("\(p).spareHosts", "must be between 0 and 1000")) }
            if let s = d.powerOnTimeoutSeconds, !(10...7200).contains(s) { out.append(.init("\(p).powerOnTimeoutSeconds", "must be between 10 and 7200")) }
        }
        if let r = settings?.security?.driftRepair, !["restore", "alarm"].contains(r) {
            out.append(.init("settings.security.driftRepair", "must be restore or alarm"))
        }
        if let r = settings?.retention {
            for (key, v) in [("tasksDays", r.tasksDays), ("eventsDays", r.eventsDays), ("alarmsDays", r.alarmsDays)] {
                if let v, !(1...3650).contains(v) { out.append(.init("settings.retention.\(key)", "must be between 1 and 3650")) }
            }
        }
        if let c = settings?.compliance {
            if let m = c.maxVCPUs, !(1...512).contains(m) { out.append(.init("settings.compliance.maxVCPUs", "must be between 1 and 512")) }
            for (i, n) in (c.allowedNetworks ?? []).enumerated() where !Names.isValid(n) {
                out.append(.init("settings.compliance.allowedNetworks[\(i)]", nameRule))
            }
        }

        func names<T>(_ section: String, _ items: [T]?, _ name: (T) -> String) -> Set<String>? {
            guard let items else { return nil }
            var seen: [String: Int] = [:]
            for (i, item) in items.enumerated() {
                let n = name(item)
                if !Names.isValid(n) { out.append(.init("\(section)[\(i)].name", nameRule)) }
                if let first = seen[n] {
                    out.append(.init("\(section)[\(i)].name", "duplicate name \(n) (also \(section)[\(first)])"))
                } else {
                    seen[n] = i
                }
            }
            return Set(seen.keys)
        }
        let siteNames = names("sites", sites, \.name)
        let hostNames = names("hosts", hosts, \.name)
        let poolNames = names("storagePools", storagePools, \.name)
        let networkNames = names("networks", networks, \.name)
        let rpNames = names("resourcePools", resourcePools, \.name)
        _ = names("vms", vms, \.name)

        func ref(_ path: String, _ value: String, in known: Set<String>?, _ what: String) {
            if let known, !known.contains(value) { out.append(.init(path, "no \(what) named \(value) in this document")) }
        }

        for (i, h) in (hosts ?? []).enumerated() {
            let p = "hosts[\(i)]"
            if let s = h.site { ref("\(p).site", s, in: siteNames, "site") }
            if let a = h.agent {
                if let url = URL(string: a), url.scheme == "https", url.host != nil {} else {
                    out.append(.init("\(p).agent", "must be an https:// URL"))
                }
            }
            if let s = h.state, !["connected", "maintenance", "poweredOff", "disconnected"].contains(s) {
                out.append(.init("\(p).state", "must be connected, maintenance, poweredOff or disconnected"))
            }
            if let c = h.capacity {
                if c.cpus < 1 || c.cpus > 4096 { out.append(.init("\(p).capacity.cpus", "must be between 1 and 4096")) }
                if c.memoryMiB < 64 { out.append(.init("\(p).capacity.memoryMiB", "must be at least 64")) }
                if let m = c.cpuMHz, m < 1 || m > 100_000 { out.append(.init("\(p).capacity.cpuMHz", "must be between 1 and 100000")) }
            }
            if let power = h.power { out += Self.validatePower(power, path: "\(p).power") }
        }

        for (i, sp) in (storagePools ?? []).enumerated() {
            let p = "storagePools[\(i)]"
            switch sp.type {
            case "dir", "shared":
                if let path = sp.path {
                    if !VMSpec.isAbsolutePath(path) { out.append(.init("\(p).path", "must be an absolute path")) }
                    else if (path.count > 1 && path.hasSuffix("/")) || path.contains("//") || path.split(separator: "/").contains("..") {
                        out.append(.init("\(p).path", "must be a plain path: no trailing /, // or .."))
                    }
                } else {
                    out.append(.init("\(p).path", "is required for a \(sp.type) pool"))
                }
            case "logical":
                if sp.volumeGroup == nil { out.append(.init("\(p).volumeGroup", "is required for a logical pool")) }
            case "rbd":
                if sp.rbd == nil { out.append(.init("\(p).rbd", "is required for an rbd pool (pool, monitors)")) }
            default: out.append(.init("\(p).type", "must be dir, shared, logical or rbd"))
            }
            if let site = sp.site, !(sites ?? []).contains(where: { $0.name == site }) {
                out.append(.init("\(p).site", "unknown site \(site)"))
            }
            if sp.site != nil && sp.type != "shared" { out.append(.init("\(p).site", "only a shared pool belongs to a site")) }
            for (j, h) in (sp.hosts ?? []).enumerated() where !(hosts ?? []).contains(where: { $0.name == h }) {
                out.append(.init("\(p).hosts[\(j)]", "unknown host \(h)"))
            }
        }

        var vlans: [Int: Int] = [:]
        var vnis: [Int: Int] = [:]
        var bridges: [String: Int] = [:]
        for (i, n) in (networks ?? []).enumerated() {
            let p = "networks[\(i)]"
            if let t = n.type, t != "bridge" && t != "vxlan" { out.append(.init("\(p).type", "must be bridge or vxlan")) }
            if n.type == "vxlan" && n.vni == nil { out.append(.init("\(p).vni", "a vxlan network needs its VNI")) }
            if n.type == "vxlan" && n.vlan != nil { out.append(.init("\(p).vlan", "a vxlan network carries no VLAN tag (give each segment its own VNI)")) }
            if n.type != "vxlan" && n.vni != nil { out.append(.init("\(p).vni", "only a vxlan network has a VNI")) }
            if let u = n.uplink, !VMSpec.isInterfaceName(u) { out.append(.init("\(p).uplink", "must be a Linux interface name")) }
            if n.uplink != nil && n.mode == "bridge" { out.append(.init("\(p).uplink", "a plain bridge network uses the operator's bridge as it is; uplink is for VLAN and VXLAN networks")) }
            if let m = n.mtu, !(576...9_000).contains(m) { out.append(.init("\(p).mtu", "must be between 576 and 9000")) }
            if n.mtu != nil && n.mode == "bridge" { out.append(.init("\(p).mtu", "a plain bridge network keeps the operator's bridge MTU")) }
            if let b = n.bandwidth { out += b.validate("\(p).bandwidth") }
            if let other = bridges[n.hostBridge] {
                out.append(.init("\(p).bridge", "bridge \(n.hostBridge) also carries networks[\(other)]: each network needs its own bridge"))
            } else { bridges[n.hostBridge] = i }
            var groups: Set<String> = []
            for (j, g) in (n.portGroups ?? []).enumerated() {
                let gp = "\(p).portGroups[\(j)]"
                if !Names.isValid(g.name) { out.append(.init("\(gp).name", "must match ^[a-z][a-z0-9-]{0,62}$")) }
                if !groups.insert(g.name).inserted { out.append(.init("\(gp).name", "port group \(g.name) is given twice")) }
                if let b = g.bandwidth { out += b.validate("\(gp).bandwidth") }
            }
            if let b = n.bridge, !VMSpec.isInterfaceName(b) { out.append(.init("\(p).bridge", "must be a Linux interface name")) }
            else if n.bridge == nil && !VMSpec.isInterfaceName(n.hostBridge) {
                out.append(.init("\(p).bridge", "\(n.hostBridge) is no Linux interface name (at most 15 characters): name the bridge"))
            }
            if let v = n.vlan {
                if v < 1 || v > 4094 { out.append(.init("\(p).vlan", "must be between 1 and 4094")) }
                if let other = vlans[v] { out.append(.init("\(p).vlan", "VLAN \(v) is also used by networks[\(other)]")) } else { vlans[v] = i }
            }
            if let v = n.vni {
                if v < 1 || v > 16_777_215 { out.append(.init("\(p).vni", "must be between 1 and 16777215")) }
                if let other = vnis[v] { out.append(.init("\(p).vni", "VNI \(v) is also used by networks[\(other)]")) } else { vnis[v] = i }
            }
        }

        out += validateResourcePools(known: rpNames)

        var macs: [String: String] = [:]
        for (i, vm) in (vms ?? []).enumerated() {
            let p = "vms[\(i)]"
            out += vm.validate(prefix: p)
            if let rp = vm.resourcePool { ref("\(p).resourcePool", rp, in: rpNames, "resource pool") }
            if let rp = vm.resourcePool, let limit = vm.resources?.cpu?.limitMHz,
               let (pool, poolLimit) = Self.tightestCPULimit(from: rp, pools: resourcePools ?? []), limit > poolLimit {
                // On each host a VM's CFS quota sits inside its pool's partition, and cgroup v1 refuses a
                // child quota above its parent's.
                out.append(.init("\(p).resources.cpu.limitMHz", "\(limit) MHz is above the CPU limit of resource pool \(pool) (\(poolLimit) MHz), which caps it anyway"))
            }
            for (j, n) in vm.nics.enumerated() {
                let np = "\(p).nics[\(j)]"
                if let net = n.network { ref("\(np).network", net, in: networkNames, "network") }
                if let net = n.network, let pg = n.portGroup, let network = (networks ?? []).first(where: { $0.name == net }),
                   !(network.portGroups ?? []).contains(where: { $0.name == pg }) {
                    out.append(.init("\(np).portGroup", "network \(net) has no port group \(pg)"))
                }
                if n.filter != nil { out.append(.init("\(np).filter", "is set from the network's antiSpoofing (or its port group's)")) }
                if n.mtu != nil { out.append(.init("\(np).mtu", "is set from the network's mtu")) }
                if let mac = n.mac?.lowercased(), VMSpec.isMAC(mac) {
                    if let other = macs[mac] { out.append(.init("\(np).mac", "\(mac) is also used by \(other)")) } else { macs[mac] = np }
                }
            }
            for (j, d) in vm.disks.enumerated() {
                if let pool = d.pool {
                    ref("\(p).disks[\(j)].pool", pool, in: poolNames, "storage pool")
                    if d.sizeGiB == nil && d.from == nil && d.path == nil {
                        out.append(.init("\(p).disks[\(j)]", "needs sizeGiB (a new volume) or from (a clone of an image)"))
                    }
                }
            }
            if let ps = vm.powerState, ps != "running" && ps != "stopped" {
                out.append(.init("\(p).powerState", "must be running or stopped"))
            }
            if let h = vm.host { ref("\(p).host", h, in: hostNames, "host") }
            if let pl = vm.placement {
                if let s = pl.site { ref("\(p).placement.site", s, in: siteNames, "site") }
                for (j, h) in (pl.hosts ?? []).enumerated() { ref("\(p).placement.hosts[\(j)]", h, in: hostNames, "host") }
                if pl.hosts?.isEmpty == true { out.append(.init("\(p).placement.hosts", "must not be empty when given")) }
                let anti = pl.antiAffinity ?? []
                let aff = pl.affinity ?? []
                // Rules may name VMs of other documents, or VMs not created yet: a rule naming no
                // existing VM constrains nothing, so only names are checked here.
                for (j, other) in anti.enumerated() {
                    if other == vm.name { out.append(.init("\(p).placement.antiAffinity[\(j)]", "a VM cannot be kept apart from itself")) }
                    else if !Names.isValid(other) { out.append(.init("\(p).placement.antiAffinity[\(j)]", nameRule)) }
                }
                for (j, other) in aff.enumerated() {
                    if other == vm.name { out.append(.init("\(p).placement.affinity[\(j)]", "a VM is always with itself")) }
                    else if !Names.isValid(other) { out.append(.init("\(p).placement.affinity[\(j)]", nameRule)) }
                    if anti.contains(other) {
                        out.append(.init("\(p).placement.affinity[\(j)]", "\(other) is also in antiAffinity"))
                    }
                }
            }
        }
        return out
    }

    static func validatePower(_ power: Power, path: String) -> [ValidationProblem] {
        guard let allowed = Power.optionsByDriver[power.driver] else {
            return [.init("\(path).driver", "must be ipmi, wol, command, testbed or none")]
        }
        var out: [ValidationProblem] = []
        // Options that once carried programs and files: a manifest may name neither (the controller would
        // run or read them for whoever may apply one).
        let moved: [String: String] = [
            "passwordFile": "a manifest names no file the controller reads: put the file in the controller's power configuration (credentials) and give its name as credential",
            "script": "the testbed script is the controller's (power configuration testbedScript)",
            "on": "a manifest carries no commands: define them in the controller's power configuration (commands) and name the profile",
            "status": "a manifest carries no commands: define them in the controller's power configuration (commands) and name the profile",
        ]
        for key in power.options.keys.sorted() where !allowed.contains(key) {
            out.append(.init("\(path).\(key)", moved[power.driver == "command" && key == "off" ? "on" : key] ?? "unknown option for the \(power.driver) driver"))
        }
        for key in ["profile", "off", "credential"] where allowed.contains(key) {
            if let v = power.options[key], !Names.isValid(v) {
                out.append(.init("\(path).\(key)", "must name an entry of the controller's power configuration (^[a-z][a-z0-9-]{0,62}$)"))
            }
        }
        let required: [String: [String]] = ["ipmi": ["address"], "wol": ["mac"], "command": ["profile"], "testbed": ["host"]]
        for key in required[power.driver] ?? [] where power.options[key] == nil {
            out.append(.init("\(path).\(key)", "is required by the \(power.driver) driver"))
        }
        if let mac = power.options["mac"], !VMSpec.isMAC(mac) && !Self.isAnyMAC(mac) {
            out.append(.init("\(path).mac", "must be a MAC address"))
        }
        if let port = power.options["port"], !(UInt16(port).map { $0 > 0 } ?? false) {
            out.append(.init("\(path).port", "must be a UDP port (1-65535)"))
        }
        if let b = power.options["broadcast"], !Self.isIPv4(b) {
            out.append(.init("\(path).broadcast", "must be an IPv4 address"))
        }
        if let i = power.options["interface"], !["lan", "lanplus"].contains(i) {
            out.append(.init("\(path).interface", "must be lan or lanplus"))
        }
        for key in ["address", "username", "host"] {
            if let v = power.options[key], v.isEmpty || v.hasPrefix("-") || v.contains("\0") {
                out.append(.init("\(path).\(key)", "must be non-empty and must not start with '-'"))
            }
        }
        return out
    }

    static func isIPv4(_ s: String) -> Bool {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { !$0.isEmpty && $0.count <= 3 && UInt8($0) != nil }
    }

    static func isAnyMAC(_ s: String) -> Bool {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        return parts.count == 6 && parts.allSatisfy { $0.count == 2 && UInt8($0, radix: 16) != nil }
    }
}

extension ClusterManifest {
    /// The lowest CPU limit on a pool's chain up to its root, and the pool that sets it.
    static func tightestCPULimit(from pool: String, pools: [ResourcePool]) -> (String, Int)? {
        let byName = Dictionary(pools.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var best: (String, Int)?
        var seen = Set<String>()
        var cur: String? = pool
        while let c = cur, let p = byName[c], seen.insert(c).inserted {
            if let l = p.cpu?.limitMHz, best == nil || l < best!.1 { best = (c, l) }
            cur = p.parent
        }
        return best
    }
}
