import AgentAPI
import ClusterModel
import ControllerAPI
import Foundation

/// The distributed switch: every network of the manifest on every host, VXLAN segments replicated to
/// every other host (head-end replication, across sites as well), NIC policies from networks and port
/// groups.
extension Controller {
    /// A manifest NIC as its host plugs it in: the network's bridge, MTU, traffic shaping (the NIC's own,
    /// else its port group's, else its network's) and anti-spoofing filter (on unless the port group,
    /// or else the network, turns it off).
    static func hostNIC(_ nic: VMSpec.NIC, network: ClusterManifest.Network?) -> VMSpec.NIC {
        var n = nic
        guard let network else {
            n.bridge = nic.network
            n.filter = "clean-traffic"
            return n
        }
        let group = network.portGroups?.first { $0.name == nic.portGroup }
        n.bridge = network.hostBridge
        n.mtu = network.segmentMTU
        n.bandwidth = nic.bandwidth ?? group?.bandwidth ?? network.bandwidth
        n.filter = (group?.antiSpoofing ?? network.antiSpoofing ?? true) ? "clean-traffic" : nil
        return n
    }

    /// A host's tunnel endpoint: the address its agent is reached at.
    static func endpoint(_ host: ClusterManifest.Host) -> String? {
        guard let agent = host.agent, let h = URLComponents(string: agent)?.host, !h.isEmpty else { return nil }
        return h.hasPrefix("[") ? String(h.dropFirst().dropLast()) : h
    }

    /// What a host is given: every network, VXLAN ones with every other host as a peer.
    static func networkSettings(_ manifest: ClusterManifest, host: ClusterManifest.Host) -> [NetworkSetting] {
        let peers = (manifest.hosts ?? []).filter { $0.name != host.name }.compactMap(endpoint)
        let own = endpoint(host)
        return (manifest.networks ?? []).map { n in
            NetworkSetting(name: n.name, bridge: n.hostBridge, mode: n.mode, uplink: n.uplink, vlan: n.vlan, vni: n.vni,
                           peers: n.mode == "vxlan" ? Array(Set(peers.filter { $0 != own })).sorted() : [], mtu: n.mode == "bridge" ? nil : n.segmentMTU,
                           local: n.mode == "vxlan" ? own : nil)
        }
    }

    /// Gives every answering host its networks when they changed, and every 30 s (a bridge deleted
    /// behind the agent's back is made again); keeps what each host reports.
    func enforceNetworks(_ manifest: ClusterManifest, observed: Observed) async {
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let hosts = (manifest.hosts ?? []).filter { $0.agent != nil && observed.inventories[$0.name] != nil }
        let due = hosts.map { ($0, Self.networkSettings(manifest, host: $0)) }.filter { h, want in
            networkState.withLock { s in
                guard let last = s[h.name] else { return true }
                return last.settings != want || now - last.atMs >= 30_000 || last.error != nil
            }
        }
        guard !due.isEmpty else { return }
        await withTaskGroup(of: Void.self) { group in
            for (h, want) in due {
                group.addTask {
                    var state = HostNetworks(settings: want, networks: [], error: nil, atMs: now)
                    do {
                        state.networks = try await self.agents.applyNetworks(h.agent!, NetworksRequest(networks: want))
                    } catch {
                        state.error = "\(error)"
                        self.logger.warning("networks not applied", metadata: ["host": "\(h.name)", "error": "\(error)"])
                    }
                    for n in state.networks where n.error != nil {
                        self.logger.warning("network unusable", metadata: ["host": "\(h.name)", "network": "\(n.name)", "error": "\(n.error!)"])
                    }
                    self.networkState.withLock { $0[h.name] = state }
                }
            }
        }
    }

    /// Each network with what every host reports of it.
    public func networkViews() async throws -> [NetworkView] {
        let manifest = try await desired()
        let state = networkState.withLock { $0 }
        return (manifest.networks ?? []).map { n in
            let hosts = (manifest.hosts ?? []).map { h -> NetworkView.OnHost in
                let seen = state[h.name]
                if let s = seen?.networks.first(where: { $0.name == n.name }) {
                    return .init(host: h.name, up: s.up, mtu: s.mtu, ports: s.ports, peers: s.peers, error: s.error)
                }
                return .init(host: h.name, up: false, mtu: nil, ports: [], peers: [], error: seen?.error ?? "not reported yet")
            }
            return NetworkView(name: n.name, mode: n.mode, bridge: n.hostBridge, vlan: n.vlan, vni: n.vni, mtu: n.segmentMTU,
                               antiSpoofing: n.antiSpoofing ?? true, portGroups: (n.portGroups ?? []).map(\.name), hosts: hosts)
        }
    }
}

/// What a host last reported of its networks.
struct HostNetworks: Sendable {
    var settings: [NetworkSetting]
    var networks: [NetworkStatus]
    var error: String?
    var atMs: Int64
}
