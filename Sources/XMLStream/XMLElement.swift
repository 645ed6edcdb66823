import NIOCore

/// An XML element as XMPP uses it: a resolved namespace, attributes and ordered children.
///
/// Stanzas are small trees; a value type keeps them cheap to pass between event loops
/// (they are `Sendable`) and to rewrite (`from`/`to` stamping) without aliasing surprises.
public struct XMLElement: Sendable, Hashable {
    /// Local name, without prefix.
    public var name: String
    /// Resolved namespace URI; empty when the element has none.
    public var namespace: String
    /// Attributes in document order. Namespaced attributes (e.g. `xml:lang`) carry their namespace.
    public var attributes: [XMLAttribute]
    /// Child nodes in document order.
    public var children: [XMLNode]

    public init(
        name: String,
        namespace: String,
        attributes: [XMLAttribute] = [],
        children: [XMLNode] = []
    ) {
        self.name = name
        self.namespace = namespace
        self.attributes = attributes
        self.children = children
    }

    /// Convenience initialiser for the common case of plain attributes.
    public init(_ name: String, xmlns: String, _ attributes: [String: String] = [:], children: [XMLElement] = []) {
        self.name = name
        self.namespace = xmlns
        self.attributes = attributes.sorted { $0.key < $1.key }.map { XMLAttribute(name: $0.key, value: $0.value) }
        self.children = children.map { .element($0) }
    }

    /// The value of an un-namespaced attribute.
    public subscript(attribute name: String) -> String? {
        get {
            // By index, not `for attribute in`: the iterator copies each attribute (three texts
            // retained and released) just to compare its name.
            for index in attributes.indices where attributes[index].name == name && attributes[index].namespace.isEmpty {
                return attributes[index].value
            }
            return nil
        }
        set {
            if let index = attributes.firstIndex(where: { $0.name == name && $0.namespace.isEmpty }) {
                if let newValue {
                    attributes[index].value = newValue
                } else {
                    attributes.remove(at: index)
                }
            } else if let newValue {
                attributes.append(XMLAttribute(name: name, value: newValue))
            }
        }
    }

    /// `xml:lang`, if present.
    public var language: String? {
        attributes.first { $0.name == "lang" && $0.namespace == XMLNamespace.xml }?.value
    }

    /// Child elements only.
    public var elements: some Sequence<XMLElement> {
        children.lazy.compactMap {
            if case .element(let element) = $0 { return element }
            return nil
        }
    }

    /// The first child element with this name and namespace (namespace `nil` matches any).
    public func child(_ name: String, namespace: String? = nil) -> XMLElement? {
        firstElement { $0.name == name && (namespace == nil || $0.namespace == namespace) }
    }

    /// The first child element in this namespace.
    public func child(namespace: String) -> XMLElement? {
        firstElement { $0.namespace == namespace }
    }

    /// Whether a child element satisfies `predicate`. The children are looked at where they
    /// are (`elements` hands out a copy of each, retaining its texts and arrays).
    public func containsElement(where predicate: (borrowing XMLElement) throws -> Bool) rethrows -> Bool {
        try firstElementIndex(where: predicate) != nil
    }

    /// The first child element satisfying `predicate` (only that one is copied).
    public func firstElement(where predicate: (borrowing XMLElement) throws -> Bool) rethrows -> XMLElement? {
        guard let index = try firstElementIndex(where: predicate), case .element(let element) = children[index] else { return nil }
        return element
    }

    private func firstElementIndex(where predicate: (borrowing XMLElement) throws -> Bool) rethrows -> Int? {
        try children.withUnsafeBufferPointer { nodes in
            for index in nodes.indices {
                switch nodes[index] {
                case .element(let element): if try predicate(element) { return index }
                case .text: continue
                }
            }
            return nil
        }
    }

    /// The first child element.
    public var firstChild: XMLElement? {
        for case .element(let element) in children { return element }
        return nil
    }

    /// Concatenated text of direct text children.
    public var text: String {
        var result = ""
        for case .text(let string) in children { result += string }
        return result
    }

    /// Appends a child element.
    public mutating func append(_ element: XMLElement) {
        children.append(.element(element))
    }

    /// Appends text.
    public mutating func append(text: String) {
        children.append(.text(text))
    }

    /// Removes child elements matching the predicate.
    public mutating func removeChildren(where predicate: (XMLElement) -> Bool) {
        func matches(_ node: XMLNode) -> Bool {
            if case .element(let element) = node { return predicate(element) }
            return false
        }
        // Looked for first: `removeAll` copies children shared with another copy of the element
        // even when it removes nothing.
        guard children.contains(where: matches) else { return }
        children.removeAll(where: matches)
    }

    /// Returns a copy with one child element containing `text`.
    public func withText(_ text: String) -> XMLElement {
        var copy = self
        copy.children.append(.text(text))
        return copy
    }
}

/// One attribute. `namespace` is empty for ordinary attributes.
public struct XMLAttribute: Sendable, Hashable {
    public var name: String
    public var namespace: String
    public var value: String

    public init(name: String, namespace: String = "", value: String) {
        self.name = name
        self.namespace = namespace
        self.value = value
    }
}

/// A child node: an element or character data.
public enum XMLNode: Sendable, Hashable {
    case element(XMLElement)
    case text(String)
}

/// Namespaces the XML layer itself must know.
public enum XMLNamespace {
    public static let xml = "http://www.w3.org/XML/1998/namespace"
    public static let streams = "http://etherx.jabber.org/streams"
    public static let framing = "urn:ietf:params:xml:ns:xmpp-framing"
}

extension XMLElement {
    /// Parses one standalone element (e.g. a stanza from storage). Each element must declare
    /// its namespace (`xmlns`), as `XMLSerializer.string` writes it.
    public static func parse(_ text: String, limits: XMLStreamLimits = XMLStreamLimits(maxStanzaBytes: 16 * 1024 * 1024)) throws -> XMLElement {
        let parser = XMLStreamParser(limits: limits, framing: .framed)
        var result: XMLElement?
        try parser.feed(ByteBuffer(string: text)) { event in
            if result == nil, case .element(let element) = event { result = element }
        }
        guard let result else { throw XMLStreamError(.badFormat, "no complete element") }
        return result
    }
}
