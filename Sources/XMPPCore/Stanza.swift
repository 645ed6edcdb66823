import XMLStream

/// Accessors shared by every stanza kind.
extension XMLElement {
    /// `message`, `presence` or `iq` in the client or server namespace.
    public var isStanza: Bool {
        (namespace == NS.client || namespace == NS.server) && (name == "message" || name == "presence" || name == "iq")
    }

    public var stanzaType: String? { self[attribute: "type"] }
    public var id: String? { self[attribute: "id"] }

    /// A result IQ answering `self`, with an optional payload.
    public func iqResult(_ payload: XMLElement? = nil) -> XMLElement {
        var result = XMLElement(name: "iq", namespace: namespace)
        if let id { result[attribute: "id"] = id }
        if let from = self[attribute: "from"] { result[attribute: "to"] = from }
        if let to = self[attribute: "to"] { result[attribute: "from"] = to }
        result[attribute: "type"] = "result"
        if let payload { result.append(payload) }
        return result
    }
}
