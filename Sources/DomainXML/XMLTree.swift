import CLibXML2

/// A thin owner of a libxml2 document. Every name, attribute value and text node goes through libxml2's
/// tree API, which escapes on output: no caller string can become markup.
final class XMLDocument {
    let doc: xmlDocPtr

    init(root name: String) {
        xmlInitParser()
        doc = xmlNewDoc(xmlString("1.0"))
        let root = withXMLString(name) { xmlNewDocNode(doc, nil, $0, nil) }!
        xmlDocSetRootElement(doc, root)
    }

    /// Parses without network access and without entity substitution (no XXE).
    init(parsing text: String) throws(DomainXMLError) {
        xmlInitParser()
        let options = Int32(XML_PARSE_NONET.rawValue | XML_PARSE_NOBLANKS.rawValue | XML_PARSE_NOERROR.rawValue | XML_PARSE_NOWARNING.rawValue)
        let parsed: xmlDocPtr? = text.withCString { ptr in
            xmlReadMemory(ptr, Int32(text.utf8.count), "domain.xml", "UTF-8", options)
        }
        guard let parsed else { throw DomainXMLError.malformed("not well-formed XML") }
        doc = parsed
    }

    deinit { xmlFreeDoc(doc) }

    var root: XMLElement { XMLElement(node: xmlDocGetRootElement(doc)!) }

    func serialized() -> String {
        var buffer: UnsafeMutablePointer<xmlChar>?
        var size: Int32 = 0
        xmlDocDumpFormatMemoryEnc(doc, &buffer, &size, "UTF-8", 1)
        defer { vs_xml_free(buffer) }
        guard let buffer else { return "" }
        let text = String(decoding: UnsafeBufferPointer(start: buffer, count: Int(size)), as: UTF8.self)
        // Drop the XML declaration: libvirt does not need it.
        if text.hasPrefix("<?xml"), let end = text.firstIndex(of: "\n") {
            return String(text[text.index(after: end)...])
        }
        return text
    }
}

/// A non-owning view of an element; valid while its document lives.
struct XMLElement {
    let node: xmlNodePtr

    @discardableResult
    func add(_ name: String, _ attributes: KeyValuePairs<String, String> = [:], text: String? = nil) -> XMLElement {
        let child: xmlNodePtr = withXMLString(name) { n in
            if let text {
                return withXMLString(text) { xmlNewTextChild(node, nil, n, $0) }
            }
            return xmlNewChild(node, nil, n, nil)
        }!
        let element = XMLElement(node: child)
        for (k, v) in attributes { element.set(k, v) }
        return element
    }

    func set(_ attribute: String, _ value: String) {
        withXMLString(attribute) { a in withXMLString(value) { _ = xmlSetProp(node, a, $0) } }
    }

    func declareNamespace(prefix: String, href: String) -> xmlNsPtr? {
        withXMLString(href) { h in withXMLString(prefix) { xmlNewNs(node, h, $0) } }
    }

    func setNamespace(_ ns: xmlNsPtr?) { xmlSetNs(node, ns) }

    var name: String { String(cString: node.pointee.name) }

    var children: [XMLElement] {
        var out: [XMLElement] = []
        var cur = node.pointee.children
        while let c = cur {
            if c.pointee.type == XML_ELEMENT_NODE { out.append(XMLElement(node: c)) }
            cur = c.pointee.next
        }
        return out
    }

    func child(_ name: String) -> XMLElement? { children.first { $0.name == name } }
    func all(_ name: String) -> [XMLElement] { children.filter { $0.name == name } }

    func attribute(_ name: String) -> String? {
        guard let v = withXMLString(name, { xmlGetProp(node, $0) }) else { return nil }
        defer { vs_xml_free(v) }
        return String(cString: v)
    }

    var text: String {
        guard let v = xmlNodeGetContent(node) else { return "" }
        defer { vs_xml_free(v) }
        return String(cString: v)
    }
}

func withXMLString<R>(_ s: String, _ body: (UnsafePointer<xmlChar>) -> R) -> R {
    s.withCString { $0.withMemoryRebound(to: xmlChar.self, capacity: s.utf8.count + 1, body) }
}

private func xmlString(_ s: StaticString) -> UnsafePointer<xmlChar> {
    UnsafeRawPointer(s.utf8Start).assumingMemoryBound(to: xmlChar.self)
}
