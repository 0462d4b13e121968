/// `PUT /v1/networks`: every network of the distributed switch this host carries. The agent makes
/// what is missing, mends what differs and removes the bridges and tunnels it made for networks no
/// longer given (a bridge still holding a VM's NIC stays until the NIC leaves).
public struct NetworksRequest: Codable, Sendable, Equatable {
    public var networks: [NetworkSetting]
    public init(networks: [NetworkSetting]) { self.networks = networks }
}

/// One network as a host carries it.
public struct NetworkSetting: Codable, Sendable, Equatable {
    public var name: String
    /// The bridge NICs plug into.
    public var bridge: String
    /// `bridge` (the operator's bridge, used as it is), `vlan` (a bridge over VLAN `vlan` of `uplink`)
    /// or `vxlan` (a bridge over a VXLAN tunnel with VNI `vni` to every address in `peers`).
    public var mode: String
    public var uplink: String?
    public var vlan: Int?
    public var vni: Int?
    /// VXLAN: the other hosts' tunnel endpoints (addresses or names); broadcasts and unknown
    /// destinations are replicated to each (head-end replication: no multicast underlay needed).
    public var peers: [String]
    public var mtu: Int?
    /// VXLAN: the UDP port (default 4789).
    public var port: Int?
    /// VXLAN: this host's own tunnel endpoint (the source address; the tunnel accepts frames only there).
    public var local: String?
    public init(name: String, bridge: String, mode: String, uplink: String? = nil, vlan: Int? = nil, vni: Int? = nil,
                peers: [String] = [], mtu: Int? = nil, port: Int? = nil, local: String? = nil) {
        self.local = local
        self.name = name
        self.bridge = bridge
        self.mode = mode
        self.uplink = uplink
        self.vlan = vlan
        self.vni = vni
        self.peers = peers
        self.mtu = mtu
        self.port = port
    }
}

/// A network on this host, as the kernel has it.
public struct NetworkStatus: Codable, Sendable, Equatable {
    public var name: String
    public var bridge: String
    public var mode: String
    /// The bridge (and its tunnel or VLAN device) exist and are up.
    public var up: Bool
    public var mtu: Int?
    /// The VLAN or VXLAN device under the bridge.
    public var tunnel: String?
    /// Everything plugged into the bridge (the tunnel, VMs' tap devices, an operator's uplink).
    public var ports: [String]
    /// VXLAN: the endpoints broadcasts are replicated to.
    public var peers: [String]
    /// Why the network is not usable here (its bridge or uplink is missing, a command failed).
    public var error: String?
    public init(name: String, bridge: String, mode: String, up: Bool, mtu: Int?, tunnel: String?, ports: [String], peers: [String], error: String?) {
        self.name = name
        self.bridge = bridge
        self.mode = mode
        self.up = up
        self.mtu = mtu
        self.tunnel = tunnel
        self.ports = ports
        self.peers = peers
        self.error = error
    }
}
