import XMLStream

/// A stream-level error (RFC 6120 §4.9): sent, then the stream is closed.
public struct StreamError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Condition: String, Sendable, Hashable {
        case badFormat = "bad-format"
        case badNamespacePrefix = "bad-namespace-prefix"
        case conflict
        case connectionTimeout = "connection-timeout"
        case hostGone = "host-gone"
        case hostUnknown = "host-unknown"
        case improperAddressing = "improper-addressing"
        case internalServerError = "internal-server-error"
        case invalidFrom = "invalid-from"
        case invalidNamespace = "invalid-namespace"
        case invalidXML = "invalid-xml"
        case notAuthorized = "not-authorized"
        case notWellFormed = "not-well-formed"
        case policyViolation = "policy-violation"
        case remoteConnectionFailed = "remote-connection-failed"
        case reset
        case resourceConstraint = "resource-constraint"
        case restrictedXML = "restricted-xml"
        case seeOtherHost = "see-other-host"
        case systemShutdown = "system-shutdown"
        case undefinedCondition = "undefined-condition"
        case unsupportedEncoding = "unsupported-encoding"
        case unsupportedFeature = "unsupported-feature"
        case unsupportedStanzaType = "unsupported-stanza-type"
        case unsupportedVersion = "unsupported-version"
    }

    public var condition: Condition
    public var text: String?
    /// An application-specific condition (e.g. XEP-0198 `<handled-count-too-high/>`).
    public var applicationCondition: XMLElement?

    public init(_ condition: Condition, text: String? = nil, applicationCondition: XMLElement? = nil) {
        self.condition = condition
        self.text = text
        self.applicationCondition = applicationCondition
    }

    /// Maps the XML layer's refusal onto the stream error the peer sees.
    public init(_ error: XMLStreamError) {
        let condition: Condition
        switch error.condition {
        case .notWellFormed: condition = .notWellFormed
        case .restrictedXML: condition = .restrictedXML
        case .policyViolation: condition = .policyViolation
        case .badFormat: condition = .badFormat
        }
        self.init(condition, text: error.text)
    }

    public var description: String { text.map { "\(condition.rawValue): \($0)" } ?? condition.rawValue }

    /// `<stream:error>` with the condition and optional text.
    public var element: XMLElement {
        var error = XMLElement("error", xmlns: NS.streams)
        error.append(XMLElement(condition.rawValue, xmlns: NS.streamErrors))
        if let text {
            error.append(XMLElement("text", xmlns: NS.streamErrors).withText(text))
        }
        if let applicationCondition { error.append(applicationCondition) }
        return error
    }
}
