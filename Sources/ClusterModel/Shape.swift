import FoundationEssentials

/// The shape of a JSON document: which keys each object may hold and what type each value has.
/// Walking a document against its shape reports every unknown field and every wrong type,
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

    /// Every problem of a document against this shape, in document order (an object's keys sorted),
    /// each path behind `prefix`; nil when the document is not JSON at all. The walk runs inside
    /// JSONDecoder and tries each value as the type its shape expects, so a good document is read
    /// once, with no tree built and no failed guesses.
    func problems(in data: Data, prefix: String) -> [ValidationProblem]? {
        let walker = ShapeWalker(self, prefix: prefix)
        let decoder = JSONDecoder()
        decoder.userInfo[ShapeWalker.key] = walker
        do {
            _ = try decoder.decode(ShapeWalk.self, from: data)
        } catch {
            return nil
        }
        return walker.problems
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
                "retention": .object(["tasksDays": .integer, "eventsDays": .integer, "alarmsDays": .integer]),
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

/// The state of one walk: the shape the next value must have, the path to it, the problems so far.
/// Values are visited depth first and one at a time, so a parent hands its child the child's shape
/// through `next` right before decoding it.
private final class ShapeWalker: @unchecked Sendable {
    static let key = CodingUserInfoKey(rawValue: "vsphere.shape-walker")!

    enum Step { case key(String), index(Int) }

    var next: Shape
    var steps: [Step] = []
    var problems: [ValidationProblem] = []
    let prefix: String

    init(_ shape: Shape, prefix: String) {
        self.next = shape
        self.prefix = prefix
    }

    func report(_ message: String, at last: Step? = nil) {
        var path = prefix
        for step in steps + (last.map { [$0] } ?? []) {
            switch step {
            case .key(let k): path += path.isEmpty ? k : ".\(k)"
            case .index(let i): path += "[\(i)]"
            }
        }
        problems.append(ValidationProblem(path, message))
    }

    func check(_ shape: Shape, _ decoder: any Decoder) {
        switch shape {
        case .any:
            return
        case .nullable(let inner):
            if (try? decoder.singleValueContainer().decodeNil()) == true { return }
            check(inner, decoder)
        case .string:
            if (try? decoder.singleValueContainer().decode(String.self)) == nil { report("must be a string") }
        case .integer:
            if !Self.isInteger(decoder) { report("must be an integer") }
        case .number:
            if (try? decoder.singleValueContainer().decode(Double.self)) == nil { report("must be a number") }
        case .boolean:
            if (try? decoder.singleValueContainer().decode(Bool.self)) == nil { report("must be a boolean") }
        case .shares:
            if let s = try? decoder.singleValueContainer().decode(String.self), ["low", "normal", "high"].contains(s) { return }
            if !Self.isInteger(decoder) { report("must be low, normal, high or a number") }
        case .array(let element):
            guard var items = try? decoder.unkeyedContainer() else { return report("must be an array") }
            while !items.isAtEnd {
                steps.append(.index(items.currentIndex))
                next = element
                let walked = (try? items.decode(ShapeWalk.self)) != nil
                steps.removeLast()
                if !walked { break }
            }
        case .object(let fields, let required, let open):
            guard let object = try? decoder.container(keyedBy: AnyKey.self) else { return report("must be an object") }
            for key in object.allKeys.sorted(by: { $0.stringValue < $1.stringValue }) {
                guard let field = fields[key.stringValue] else {
                    if !open { report("unknown field", at: .key(key.stringValue)) }
                    continue
                }
                steps.append(.key(key.stringValue))
                next = field
                _ = try? object.decode(ShapeWalk.self, forKey: key)
                steps.removeLast()
            }
            for name in required.sorted() {
                let key = AnyKey(stringValue: name)
                if !object.contains(key) || (try? object.decodeNil(forKey: key)) == true { report("is required", at: .key(name)) }
            }
        }
    }

    /// An integer as JSON Schema counts one: no fraction, so `2.0` is one too.
    static func isInteger(_ decoder: any Decoder) -> Bool {
        guard let c = try? decoder.singleValueContainer() else { return false }
        if (try? c.decode(Int64.self)) != nil { return true }
        guard let d = try? c.decode(Double.self) else { return false }
        return d.rounded() == d && abs(d) < 9.0e15
    }
}

/// One value of the document, checked against the shape its parent handed over.
private struct ShapeWalk: Decodable {
    init(from decoder: any Decoder) throws {
        guard let walker = decoder.userInfo[ShapeWalker.key] as? ShapeWalker else { return }
        walker.check(walker.next, decoder)
    }
}

private struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}
