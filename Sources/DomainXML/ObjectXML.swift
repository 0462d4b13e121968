import FoundationEssentials

/// libvirt storage pool, volume and network XML, built with libxml2 like domain XML.
public enum StorageXML {
    /// A directory pool (`dir`): volumes are files under `path`.
    public static func dirPool(name: String, path: String) -> String {
        let doc = XMLDocument(root: "pool")
        doc.root.set("type", "dir")
        doc.root.add("name", text: name)
        doc.root.add("target").add("path", text: path)
        return doc.serialized()
    }

    /// An LVM pool (`logical`) on an existing volume group: volumes are logical volumes.
    public static func logicalPool(name: String, volumeGroup: String) -> String {
        let doc = XMLDocument(root: "pool")
        doc.root.set("type", "logical")
        doc.root.add("name", text: name)
        let source = doc.root.add("source")
        source.add("name", text: volumeGroup)
        source.add("format", ["type": "lvm2"])
        doc.root.add("target").add("path", text: "/dev/" + volumeGroup)
        return doc.serialized()
    }

    /// A Ceph RBD pool: `monitors` as host or host:port; `user` and `secretUUID` (a libvirt secret
    /// holding the key) for cephx.
    public static func rbdPool(name: String, pool: String, monitors: [String], user: String?, secretUUID: String?) -> String {
        let doc = XMLDocument(root: "pool")
        doc.root.set("type", "rbd")
        doc.root.add("name", text: name)
        let source = doc.root.add("source")
        source.add("name", text: pool)
        for m in monitors {
            let (host, port) = monitor(m)
            let h = source.add("host")
            h.set("name", host)
            if let port { h.set("port", port) }
        }
        if let user {
            let auth = source.add("auth", ["type": "ceph"])
            auth.set("username", user)
            if let secretUUID { auth.add("secret", ["uuid": secretUUID]) }
        }
        return doc.serialized()
    }

    /// A Ceph monitor as host and port: `host:port`, `[v6]:port` or a bare host.
    public static func monitor(_ m: String) -> (host: String, port: String?) {
        if m.hasPrefix("["), let r = m.ranges(of: "]:").last {
            return (String(m[m.index(after: m.startIndex)..<r.lowerBound]), String(m[r.upperBound...]))
        }
        if m.hasPrefix("[") && m.hasSuffix("]") { return (String(m.dropFirst().dropLast()), nil) }
        if m.filter({ $0 == ":" }).count == 1, let i = m.lastIndex(of: ":") {
            return (String(m[..<i]), String(m[m.index(after: i)...]))
        }
        return (m, nil)
    }

    /// What a pool's XML says: its type and target path (nil for rbd).
    public static func parsePool(_ xml: String) throws(DomainXMLError) -> (type: String, path: String?) {
        let doc = try XMLDocument(parsing: xml)
        return (doc.root.attribute("type") ?? "", doc.root.child("target")?.child("path")?.text)
    }

    /// What a volume's XML says: its format and backing image.
    public static func parseVolume(_ xml: String) throws(DomainXMLError) -> (format: String?, backing: String?) {
        let doc = try XMLDocument(parsing: xml)
        return (doc.root.child("target")?.child("format")?.attribute("type"), doc.root.child("backingStore")?.child("path")?.text)
    }

    /// A volume of `capacityBytes`, optionally backed by `backingPath` (a linked clone).
    public static func volume(name: String, capacityBytes: UInt64, format: String = "qcow2", backingPath: String? = nil, backingFormat: String = "qcow2") -> String {
        let doc = XMLDocument(root: "volume")
        doc.root.add("name", text: name)
        doc.root.add("capacity", ["unit": "bytes"], text: String(capacityBytes))
        doc.root.add("target").add("format", ["type": format])
        if let backingPath {
            let b = doc.root.add("backingStore")
            b.add("path", text: backingPath)
            b.add("format", ["type": backingFormat])
        }
        return doc.serialized()
    }
}

public enum DiskXML {
    /// The `<disk>` element a block copy writes into: a file image of `format`.
    public static func copyDestination(path: String, format: String, block: Bool = false) -> String {
        let doc = XMLDocument(root: "disk")
        doc.root.set("type", block ? "block" : "file")
        doc.root.add("driver", ["type": format])
        doc.root.add("source", [block ? "dev" : "file": path])
        return doc.serialized()
    }
}

public enum NetworkXML {
    /// A libvirt network on an existing host bridge (no NAT, no DHCP: the distributed switch owns L2).
    public static func hostBridge(name: String, bridge: String) -> String {
        let doc = XMLDocument(root: "network")
        doc.root.add("name", text: name)
        doc.root.add("forward", ["mode": "bridge"])
        doc.root.add("bridge", ["name": bridge])
        return doc.serialized()
    }

    /// An isolated libvirt-managed bridge with an address (used where libvirt creates the bridge).
    public static func isolated(name: String, bridge: String, address: String, prefix: Int) -> String {
        let doc = XMLDocument(root: "network")
        doc.root.add("name", text: name)
        doc.root.add("bridge", ["name": bridge, "stp": "off"])
        doc.root.add("ip", ["address": address, "prefix": String(prefix)])
        return doc.serialized()
    }
}
