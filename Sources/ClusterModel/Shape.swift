import Foundation

/// The shape of a JSON document: which keys each object may hold and what type each value has.
/// Walking a parsed document against its shape reports every unknown field and every wrong type,
/// each with its JSON path, before anything is decoded (a decoder stops at the first).
indirect enum Shape: Sendable {
    case object([String: Shape], required: Set<String> = [], open: Bool = false)
    case array(Shape)
    case string
    case integer
    case number
    case boolean
    /// `low`, `normal`, `high` or an integer.
    case shares
    case nullable(Shape)
    case any

    func problems(in value: Any, path: String) -> [ValidationProblem] {
        func at(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }
        switch self {
        case .any:
            return []
        case .nullable(let inner):
            return value is NSNull ? [] : inner.problems(in: value, path: path)
        case .string:
            return value is String ? [] : [.init(path, "must be a string")]
        case .integer:
            return Self.kind(value) == "integer" ? [] : [.init(path, "must be an integer")]
        case .number:
            let k = Self.kind(value)
            return k == "integer" || k == "number" ? [] : [.init(path, "must be a number")]
        case .boolean:
            return Self.kind(value) == "boolean" ? [] : [.init(path, "must be a boolean")]
        case .shares:
            if let s = value as? String, ["low", "normal", "high"].contains(s) { return [] }
            return Self.kind(value) == "integer" ? [] : [.init(path, "must be low, normal, high or a number")]
        case .array(let element):
            guard let items = value as? [Any] else { return [.init(path, "must be an array")] }
            return items.enumerated().flatMap { element.problems(in: $1, path: "\(path)[\($0)]") }
        case .object(let fields, let required, let open):
            guard let dict = value as? [String: Any] else { return [.init(path, "must be an object")] }
            var out: [ValidationProblem] = []
            for key in dict.keys.sorted() {
                guard let shape = fields[key] else {
                    if !open { out.append(.init(at(key), "unknown field")) }
                    continue
                }
                out += shape.problems(in: dict[key]!, path: at(key))
            }
            for key in required.sorted() where dict[key] == nil || dict[key] is NSNull {
                out.append(.init(at(key), "is required"))
            }
            return out
        }
    }

    /// JSON's own type of a parsed value: boolean, integer, number, string, null, array, object.
    static func kind(_ value: Any) -> String {
        if value is NSNull { return "null" }
        if value is String { return "string" }
        if value is [Any] { return "array" }
        if value is [String: Any] { return "object" }
        if let n = value as? NSNumber {
            switch String(cString: n.objCType) {
            case "c", "B": return "boolean"
            case "d", "f":
                let d = n.doubleValue
                return d.rounded() == d && abs(d) < 9.0e15 ? "integer" : "number"
            default: return "integer"
            }
        }
        return "unknown"
    }

    static let levelsCPU: Shape = .object([
        "reservationMHz": .nullable(.integer), "shares": .shares, "limitMHz": .nullable(.integer), "expandable": .boolean,
    ])
    static let levelsMemory: Shape = .object([
        "reservationMiB": .nullable(.integer), "shares": .shares, "limitMiB": .nullable(.integer), "expandable": .boolean,
    ])

    static let rate: Shape = .object(["averageKBps": .integer, "peakKBps": .integer, "burstKiB": .integer], required: ["averageKBps"])
    static let bandwidth: Shape = .object(["inbound": rate, "outbound": rate])

    static let vmSpec: Shape = .object(
        [
            "name": .string, "uuid": .string, "cpus": .integer, "memoryMiB": .integer,
            "topology": .object(["sockets": .integer, "cores": .integer, "threads": .integer], required: ["sockets", "cores", "threads"]),
            "machine": .string, "cpuModel": .string,
            "boot": .object(["kernel": .string, "initrd": .string, "cmdline": .string], required: ["kernel"]),
            "disks": .array(.object([
                "path": .string, "format": .string, "readonly": .boolean, "pool": .string, "sizeGiB": .integer, "from": .string, "clone": .string,
                "rbd": .object(["image": .string, "monitors": .array(.string), "user": .string, "secretUUID": .string], required: ["image", "monitors"]),
            ])),
            "nics": .array(.object([
                "network": .string, "portGroup": .string, "bridge": .string, "mac": .string, "model": .string, "bandwidth": bandwidth,
                "filter": .string, "mtu": .integer,
            ])),
            "resources": .object(["cpu": levelsCPU, "memory": levelsMemory]),
            "resourcePool": .nullable(.string),
            "resourcePoolPath": .array(.string),
            "graphics": .object(["type": .string, "listen": .string], required: ["type"]),
            "placement": .object([
                "site": .nullable(.string), "hosts": .array(.string), "antiAffinity": .array(.string), "affinity": .array(.string),
            ]),
            "powerState": .string,
            "host": .nullable(.string),
        ],
        required: ["name", "cpus", "memoryMiB"])

    static let manifest: Shape = .object(
        [
            "apiVersion": .string, "kind": .string,
            "metadata": .object(["name": .string], required: ["name"]),
            "settings": .object([
                "placement": .object(["strategy": .string, "cpuOvercommit": .number, "memoryOvercommit": .number]),
                "migration": .object([
                    "maxOutgoingPerHost": .integer, "maxIncomingPerHost": .integer, "hostBandwidthMiBps": .integer,
                    "defaultPolicy": .string, "transport": .string, "sharedStorageUnverifiable": .boolean,
                ]),
                "drs": .object([
                    "automation": .string, "migrationThreshold": .integer, "minGain": .number, "maxMoves": .integer,
                    "intervalSeconds": .integer, "demandWindowSeconds": .integer,
                ]),
                "security": .object(["driftRepair": .string]),
                "compliance": .object([
                    "requireResourcePool": .boolean, "requireMemoryLimit": .boolean, "requireCPULimit": .boolean, "maxVCPUs": .integer,
                    "allowedNetworks": .array(.string), "requireSite": .boolean,
                ]),
                "dpm": .object([
                    "automation": .string, "targetUtilization": .integer, "tolerance": .integer, "powerOnSustainSeconds": .integer,
                    "powerOffSustainSeconds": .integer, "spareHosts": .integer, "powerOnTimeoutSeconds": .integer,
                ]),
            ]),
            "sites": .array(.object(["name": .string], required: ["name"])),
            "hosts": .array(.object(
                [
                    "name": .string, "site": .string, "agent": .string, "state": .string,
                    "power": .object(["driver": .string], required: ["driver"], open: true),
                    "capacity": .object(["cpus": .integer, "memoryMiB": .integer, "cpuMHz": .integer], required: ["cpus", "memoryMiB"]),
                ],
                required: ["name"])),
            "storagePools": .array(.object(
                ["name": .string, "type": .string, "path": .string, "volumeGroup": .string, "site": .string, "hosts": .array(.string),
                 "rbd": .object(["pool": .string, "monitors": .array(.string), "user": .string, "secretUUID": .string], required: ["pool", "monitors"])],
                required: ["name", "type"])),
            "networks": .array(.object(
                ["name": .string, "type": .string, "vlan": .nullable(.integer), "vni": .nullable(.integer), "bridge": .string, "uplink": .string,
                 "mtu": .integer, "antiSpoofing": .boolean, "bandwidth": bandwidth,
                 "portGroups": .array(.object(["name": .string, "antiSpoofing": .boolean, "bandwidth": bandwidth], required: ["name"]))],
                required: ["name"])),
            "resourcePools": .array(.object(
                ["name": .string, "parent": .nullable(.string), "cpu": levelsCPU, "memory": levelsMemory], required: ["name"])),
            "vms": .array(vmSpec),
        ],
        required: ["apiVersion", "kind"])
}
