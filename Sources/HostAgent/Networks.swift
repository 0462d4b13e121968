import AgentAPI
import ClusterModel
import FoundationEssentials
import Glibc
import HostNetwork
import Libvirt
import Synchronization

/// The host side of the distributed switch: the bridges, VLAN devices and VXLAN tunnels the
/// controller's networks need, made with iproute2 (argument vectors, never a shell) from the plan
/// `NetworkPlan` computes against what the kernel reports.
extension HostAgent {
    public func applyNetworks(_ request: NetworksRequest) async throws(AgentError) -> [NetworkStatus] {
        var problems: [ValidationProblem] = []
        var names = Set<String>()
        var bridges = Set<String>()
        if request.networks.count > 1024 { problems.append(.init("networks", "at most 1024")) }
        for (i, n) in request.networks.enumerated() {
            let at = "networks[\(i)]"
            if !Names.isValid(n.name) { problems.append(.init("\(at).name", "must match ^[a-z][a-z0-9-]{0,62}$")) }
            if !names.insert(n.name).inserted { problems.append(.init("\(at).name", "\(n.name) is listed twice")) }
            if !bridges.insert(n.bridge).inserted { problems.append(.init("\(at).bridge", "\(n.bridge) carries another network too")) }
            if n.peers.count > 4096 { problems.append(.init("\(at).peers", "at most 4096")) }
            func isEndpoint(_ e: String) -> Bool {
                !e.isEmpty && e.utf8.count <= 253 && e.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || ".-:".contains($0)) }
            }
            if let l = n.local, !isEndpoint(l) { problems.append(.init("\(at).local", "must be an address or a host name")) }
            for (j, p) in n.peers.enumerated() where !isEndpoint(p) {
                problems.append(.init("\(at).peers[\(j)]", "must be an address or a host name"))
            }
            // Peers and the local endpoint may be names (resolved later): the checks below take addresses.
            var s = n.withPeers([])
            s.local = nil
            if s.uplink == nil && s.mode != "bridge" { s.uplink = config.uplink }
            // A VLAN network without an uplink on this host is this host's problem (reported for that
            // network), not a malformed request.
            if let p = NetworkPlan.problem(s, requireUplink: false) { problems.append(.init(at, p)) }
        }
        if !problems.isEmpty { throw AgentError.invalid(problems) }
        let uplink = config.uplink
        do {
            return try await networkApplies.run { try await self.realize(request.networks, uplink: uplink) }
        } catch let e as AgentError {
            throw e
        } catch {
            throw AgentError.internalError("\(error)")
        }
    }

    func realize(_ networks: [NetworkSetting], uplink: String?) async throws -> [NetworkStatus] {
        var want: [NetworkSetting] = []
        var unresolved: [String: String] = [:]
        for var n in networks {
            if n.uplink == nil && n.mode != "bridge" { n.uplink = uplink }
            // Tunnel endpoints are addresses: names are resolved here, on this host. A peer that does not
            // resolve is left out (and reported); the others are served.
            var peers: Set<String> = []
            for p in n.peers {
                if let a = await Self.resolve(p) { peers.insert(a) } else { unresolved[n.name] = "peer \(p) does not resolve" }
            }
            var w = n.withPeers(peers.sorted())
            if let l = n.local {
                if let a = await Self.resolve(l) { w.local = a } else { unresolved[n.name] = "local \(l) does not resolve"; w.local = nil }
            }
            want.append(w)
        }
        let plan = NetworkPlan.plan(want: want, have: try await Self.readLinks())
        var errors = plan.errors
        for c in plan.commands {
            if let n = c.network, errors[n] != nil { continue }
            do {
                _ = try await Subprocess.run(c.program, c.arguments)
                logger.info("network", metadata: ["network": "\(c.network ?? "-")", "run": "\(c)"])
            } catch {
                if let n = c.network { errors[n] = "\(c): \(error)" }
                logger.warning("network command failed", metadata: ["run": "\(c)", "error": "\(error)"])
            }
        }
        errors.merge(unresolved) { a, _ in a }
        let status = NetworkPlan.status(want: want, have: try await Self.readLinks(), errors: errors)
        networkState.withLock { $0 = (want, errors) }
        return status
    }

    /// The networks last given, as the kernel has them now.
    public func networks() async throws(AgentError) -> [NetworkStatus] {
        let (want, errors) = networkState.withLock { $0 }
        return NetworkPlan.status(want: want, have: try await Self.readLinks(), errors: errors)
    }

    static func readLinks() async throws(AgentError) -> HostLinks {
        do {
            let links = try HostLinks.parseLinks(Data(try await Subprocess.run("ip", ["-json", "-details", "link", "show"]).utf8))
            let flood = try HostLinks.parseFlood(Data(try await Subprocess.run("bridge", ["-json", "fdb", "show"]).utf8))
            return HostLinks(links: links, flood: flood)
        } catch {
            throw AgentError.internalError("reading the host's links: \(error)")
        }
    }

    /// An address literal as it is, a name through the resolver (the first IPv4, else IPv6, address).
    static func resolve(_ peer: String) async -> String? {
        if let a = NetworkPlan.canonical(peer) { return a }
        return try? await Libvirt.offload { () -> String? in
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
            var res: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(peer, nil, &hints, &res) == 0, let first = res else { return nil }
            defer { freeaddrinfo(first) }
            var found: [String] = []
            var p: UnsafeMutablePointer<addrinfo>? = first
            while let a = p {
                var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
                if getnameinfo(a.pointee.ai_addr, a.pointee.ai_addrlen, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0 {
                    found.append(String(cString: host))
                }
                p = a.pointee.ai_next
            }
            return (found.first { !$0.contains(":") } ?? found.first).flatMap(NetworkPlan.canonical)
        }
    }
}

extension NetworkSetting {
    func withPeers(_ peers: [String]) -> NetworkSetting {
        var s = self
        s.peers = peers
        return s
    }
}
