/// Why the XML layer refused a stream. Maps one-to-one onto XMPP stream error conditions.
public struct XMLStreamError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Condition: String, Sendable, Hashable {
        /// Syntax error (RFC 6120 `not-well-formed`).
        case notWellFormed = "not-well-formed"
        /// DTD, entity declaration, comment or processing instruction (RFC 6120 `restricted-xml`).
        case restrictedXML = "restricted-xml"
        /// A size or depth limit was exceeded (`policy-violation`).
        case policyViolation = "policy-violation"
        /// Well-formed XML that is not an XMPP stream (`bad-format`), e.g. text at stream level.
        case badFormat = "bad-format"
    }

    public var condition: Condition
    /// Human-readable detail, safe to send to the peer (never contains peer data verbatim).
    public var text: String

    public init(_ condition: Condition, _ text: String) {
        self.condition = condition
        self.text = text
    }

    public var description: String { "\(condition.rawValue): \(text)" }
}

/// Hard limits on what one peer may make the parser hold.
public struct XMLStreamLimits: Sendable, Hashable {
    /// Largest stanza (bytes of markup between a top-level element's start and end).
    public var maxStanzaBytes: Int
    /// Deepest element nesting, the stream root counting as depth 1.
    public var maxDepth: Int

    public init(maxStanzaBytes: Int = 262_144, maxDepth: Int = 64) {
        self.maxStanzaBytes = maxStanzaBytes
        self.maxDepth = maxDepth
    }
}

/// What the parser reports, in document order.
public enum XMLStreamEvent: Sendable {
    /// The stream root opened (`<stream:stream …>`); the element has attributes, no children.
    case streamOpened(XMLElement)
    /// A complete top-level element (stanza or nonza).
    case element(XMLElement)
    /// The stream root closed.
    case streamClosed
}
