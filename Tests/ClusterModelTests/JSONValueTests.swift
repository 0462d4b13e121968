import ClusterModel
import Foundation
import Testing
import TestSupport

/// JSONValue and the shape walk, checked against Foundation's JSONSerialization (which the agent no
/// longer links) as the independent reader.
@Suite struct JSONValueTests {
    /// A random JSON document as JSONSerialization represents it.
    static func randomTree(_ rng: inout SplitMix, depth: Int = 0) -> Any {
        switch rng.int(0...(depth > 3 ? 4 : 6)) {
        case 0: return NSNull()
        case 1: return rng.int(0...1) == 1
        case 2: return Int64(bitPattern: rng.next()) >> rng.int(0...62)
        case 3: return Double(rng.int(-100_000...100_000)) / 64
        case 4: return String((0..<rng.int(0...8)).map { _ in "aé\"\\\n/\u{1F600}z ".randomElement(using: &rng)! })
        case 5: return (0..<rng.int(0...4)).map { _ in randomTree(&rng, depth: depth + 1) }
        default:
            var o: [String: Any] = [:]
            for i in 0..<rng.int(0...4) { o["k\(i)\(rng.int(0...9))"] = randomTree(&rng, depth: depth + 1) }
            return o
        }
    }

    /// Whether a JSONValue says what JSONSerialization read.
    static func same(_ v: JSONValue, _ a: Any) -> Bool {
        switch v {
        case .null: return a is NSNull
        case .bool(let b):
            guard let n = a as? NSNumber, String(cString: n.objCType) == "c" || String(cString: n.objCType) == "B" else { return false }
            return n.boolValue == b
        case .integer(let i): return (a as? NSNumber)?.int64Value == i
        case .number(let d): return (a as? NSNumber)?.doubleValue == d
        case .string(let s): return a as? String == s
        case .array(let items):
            guard let other = a as? [Any], other.count == items.count else { return false }
            return zip(items, other).allSatisfy { same($0, $1) }
        case .object(let o):
            guard let other = a as? [String: Any], Set(other.keys) == Set(o.keys) else { return false }
            return o.allSatisfy { k, v in same(v, other[k]!) }
        }
    }

    @Test func readsWhatJSONSerializationReads() throws {
        var rng = SplitMix(seed: 20261202)
        for _ in 0..<500 {
            let tree = Self.randomTree(&rng)
            let data = try JSONSerialization.data(withJSONObject: tree, options: [.fragmentsAllowed])
            let value = try JSONValue(parsing: data)
            #expect(Self.same(value, try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])),
                    "\(String(decoding: data, as: UTF8.self))")
            // And it writes back what it read.
            #expect(try JSONValue(parsing: JSONEncoder().encode(value)) == value)
        }
    }

    @Test func accessors() throws {
        let v = try JSONValue(parsing: Data(#"{"size":17179869184,"half":2.0,"frac":0.5,"big":1e19,"name":"vda","ok":true,"none":null,"list":[1,"x"]}"#.utf8))
        #expect(v["size"]?.int64 == 17_179_869_184)
        #expect(v["size"]?.uint64 == 17_179_869_184)
        #expect(v["half"]?.int == 2)
        #expect(v["half"]?.kind == "integer")
        #expect(v["frac"]?.int == nil && v["frac"]?.kind == "number")
        #expect(v["big"]?.uint64 == 10_000_000_000_000_000_000)
        #expect(v["big"]?.int64 == nil)
        #expect(v["name"]?.string == "vda" && v["name"]?.int == nil)
        #expect(v["ok"]?.bool == true && v["ok"]?.kind == "boolean")
        #expect(v["none"]?.isNull == true)
        #expect(v["list"]?.array?.count == 2)
        #expect(v["missing"] == nil && v["list"]?["x"] == nil)
        #expect(throws: (any Error).self) { try JSONValue(parsing: Data("{".utf8)) }
    }

    @Test func trimmed() {
        #expect(" \t a b \n".trimmed == "a b")
        #expect("\n\n".trimmed == "")
        #expect("x".trimmed == "x")
        #expect("  ab  ".dropFirst().trimmed == "ab")
    }

    /// A valid spec with one field made wrong (a value of another JSON type, or an extra key) gives
    /// exactly that field's problem, wherever in the document it is.
    @Test func everyWrongFieldIsFoundWhereItIs() throws {
        let valid = #"""
        {"name":"web-1","cpus":2,"memoryMiB":512,"topology":{"sockets":1,"cores":2,"threads":1},
         "boot":{"kernel":"/k","initrd":"/i","cmdline":"console=ttyS0"},
         "disks":[{"path":"/d.qcow2","format":"qcow2","readonly":false},{"pool":"p","sizeGiB":4}],
         "nics":[{"network":"n","mtu":1500,"bandwidth":{"inbound":{"averageKBps":100}}}],
         "resources":{"cpu":{"shares":"high","limitMHz":null},"memory":{"reservationMiB":128,"shares":2000}},
         "placement":{"hosts":["h1"],"antiAffinity":["db"]}}
        """#
        let root = try JSONSerialization.jsonObject(with: Data(valid.utf8))
        #expect((try? VMSpec.decodeValidated(Data(valid.utf8))) != nil)

        // Every leaf, with its path and its value.
        var leaves: [([Any], Any)] = []
        func walk(_ node: Any, _ path: [Any]) {
            if let o = node as? [String: Any] {
                for (k, v) in o { walk(v, path + [k]) }
            } else if let a = node as? [Any] {
                for (i, v) in a.enumerated() { walk(v, path + [i]) }
            } else {
                leaves.append((path, node))
            }
        }
        walk(root, [])
        func render(_ path: [Any]) -> String {
            path.reduce("") { s, step in step is Int ? "\(s)[\(step)]" : (s.isEmpty ? "\(step)" : "\(s).\(step)") }
        }
        func replacing(_ node: Any, _ path: ArraySlice<Any>, with value: Any) -> Any {
            guard let step = path.first else { return value }
            if var o = node as? [String: Any], let k = step as? String {
                o[k] = replacing(o[k]!, path.dropFirst(), with: value)
                return o
            }
            var a = node as! [Any]
            let i = step as! Int
            a[i] = replacing(a[i], path.dropFirst(), with: value)
            return a
        }
        for (path, value) in leaves {
            let wrong: Any = value is String ? [1] as [Any] : "wrong"
            let doc = replacing(root, path[...], with: wrong)
            let data = try JSONSerialization.data(withJSONObject: doc)
            do {
                _ = try VMSpec.decodeValidated(data, prefix: "vms[3]")
                Issue.record("\(render(path)) = \(wrong) passed")
            } catch {
                #expect(error.problems.map(\.path) == ["vms[3].\(render(path))"], "\(error.problems)")
            }
        }
        // An unknown key in every object.
        var objects: [[Any]] = [[]]
        func objectsIn(_ node: Any, _ path: [Any]) {
            if let o = node as? [String: Any] {
                if !path.isEmpty { objects.append(path) }
                for (k, v) in o { objectsIn(v, path + [k]) }
            } else if let a = node as? [Any] {
                for (i, v) in a.enumerated() { objectsIn(v, path + [i]) }
            }
        }
        objectsIn(root, [])
        for path in objects {
            var target = root
            for step in path { target = step is Int ? (target as! [Any])[step as! Int] : (target as! [String: Any])[step as! String]! }
            var o = target as! [String: Any]
            o["zzUnknown"] = 1
            let data = try JSONSerialization.data(withJSONObject: replacing(root, path[...], with: o))
            do {
                _ = try VMSpec.decodeValidated(data)
                Issue.record("unknown key in \(render(path)) passed")
            } catch {
                let at = path.isEmpty ? "zzUnknown" : "\(render(path)).zzUnknown"
                #expect(error.problems.map(\.description) == ["\(at): unknown field"])
            }
        }
    }
}
