import FoundationEssentials

/// A parsed JSON document as a tree, for JSON whose shape is another program's (`qemu-img info`,
/// `ip -json`) or is only checked, not decoded (a config file's unknown keys).
/// Parsed by FoundationEssentials' JSONDecoder, so the agent needs neither Foundation's
/// JSONSerialization nor the CoreFoundation and ICU it brings along.
public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    /// A number written without fraction or exponent that fits 64 bits.
    case integer(Int64)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// Parses a document; any JSON value may stand at its top.
    public init(parsing data: Data) throws {
        self = try JSONDecoder().decode(JSONValue.self, from: data)
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    public var isNull: Bool { self == .null }
    public var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }
    public var bool: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }
    public var array: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }
    public var object: [String: JSONValue]? {
        if case .object(let o) = self { return o }
        return nil
    }
    /// The first key (in sorted order) of a top-level JSON object that is not among `known`: a settings
    /// file's misspelt field, reported by name. Nil for a document that is not an object.
    public static func firstUnknownKey(in data: Data, known: some Sequence<String>) throws -> String? {
        guard let obj = try JSONValue(parsing: data).object else { return nil }
        let known = Set(known)
        return obj.keys.sorted().first { !known.contains($0) }
    }
    /// The value as a signed integer: an integer, or a number with no fraction that fits.
    public var int64: Int64? {
        switch self {
        case .integer(let i): return i
        case .number(let d): return d.rounded() == d ? Int64(exactly: d) : nil
        default: return nil
        }
    }
    public var int: Int? { int64.flatMap { Int(exactly: $0) } }
    /// The value as an unsigned integer (sizes past 2^63 arrive as numbers).
    public var uint64: UInt64? {
        switch self {
        case .integer(let i): return UInt64(exactly: i)
        case .number(let d): return d.rounded() == d ? UInt64(exactly: d) : nil
        default: return nil
        }
    }
    public var double: Double? {
        switch self {
        case .integer(let i): return Double(i)
        case .number(let d): return d
        default: return nil
        }
    }

    /// JSON's own type of the value: boolean, integer, number, string, null, array, object. A number
    /// with no fraction (`2.0`) counts as an integer, as it does for JSON Schema.
    public var kind: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .integer: return "integer"
        case .number(let d): return d.rounded() == d && abs(d) < 9.0e15 ? "integer" : "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }
}

extension JSONValue: Codable {
    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public init(from decoder: any Decoder) throws {
        // A wrong guess costs an error value: the commonest kinds (strings and integers) first.
        let single = try decoder.singleValueContainer()
        if single.decodeNil() {
            self = .null
        } else if let s = try? single.decode(String.self) {
            self = .string(s)
        } else if let i = try? single.decode(Int64.self) {
            self = .integer(i)
        } else if let keyed = try? decoder.container(keyedBy: Key.self) {
            var o: [String: JSONValue] = [:]
            o.reserveCapacity(keyed.allKeys.count)
            for key in keyed.allKeys { o[key.stringValue] = try keyed.decode(JSONValue.self, forKey: key) }
            self = .object(o)
        } else if var unkeyed = try? decoder.unkeyedContainer() {
            var a: [JSONValue] = []
            if let n = unkeyed.count { a.reserveCapacity(n) }
            while !unkeyed.isAtEnd { a.append(try unkeyed.decode(JSONValue.self)) }
            self = .array(a)
        } else if let b = try? single.decode(Bool.self) {
            self = .bool(b)
        } else {
            self = .number(try single.decode(Double.self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .null:
            var c = encoder.singleValueContainer()
            try c.encodeNil()
        case .bool(let b):
            var c = encoder.singleValueContainer()
            try c.encode(b)
        case .integer(let i):
            var c = encoder.singleValueContainer()
            try c.encode(i)
        case .number(let d):
            var c = encoder.singleValueContainer()
            try c.encode(d)
        case .string(let s):
            var c = encoder.singleValueContainer()
            try c.encode(s)
        case .array(let a):
            var c = encoder.unkeyedContainer()
            for v in a { try c.encode(v) }
        case .object(let o):
            var c = encoder.container(keyedBy: Key.self)
            for (k, v) in o { try c.encode(v, forKey: Key(stringValue: k)) }
        }
    }
}

extension StringProtocol {
    /// The text without leading and trailing whitespace and newlines (what Foundation's
    /// `trimmingCharacters(in: .whitespacesAndNewlines)` gives, without Foundation).
    public var trimmed: String {
        guard let first = firstIndex(where: { !$0.isWhitespace }), let last = lastIndex(where: { !$0.isWhitespace }) else { return "" }
        return String(self[first...last])
    }
}
