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
