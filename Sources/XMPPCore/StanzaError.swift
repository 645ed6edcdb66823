import XMLStream

/// A stanza-level error (RFC 6120 §8.3). Modules throw these; the session serialises them.
public struct StanzaError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The defined conditions of RFC 6120 §8.3.3.
    public enum Condition: String, Sendable, Hashable, CaseIterable {
        case badRequest = "bad-request"
        case conflict
        case featureNotImplemented = "feature-not-implemented"
        case forbidden
        case gone
        case internalServerError = "internal-server-error"
        case itemNotFound = "item-not-found"
        case jidMalformed = "jid-malformed"
        case notAcceptable = "not-acceptable"
        case notAllowed = "not-allowed"
        case notAuthorized = "not-authorized"
        case policyViolation = "policy-violation"
        case recipientUnavailable = "recipient-unavailable"
        case redirect
        case registrationRequired = "registration-required"
        case remoteServerNotFound = "remote-server-not-found"
        case remoteServerTimeout = "remote-server-timeout"
        case resourceConstraint = "resource-constraint"
        case serviceUnavailable = "service-unavailable"
        case subscriptionRequired = "subscription-required"
        case undefinedCondition = "undefined-condition"
        case unexpectedRequest = "unexpected-request"

        /// The error type RFC 6120 suggests for the condition.
        public var defaultType: ErrorType {
            switch self {
            case .badRequest, .jidMalformed, .notAcceptable, .policyViolation, .unexpectedRequest: return .modify
            case .conflict, .featureNotImplemented, .itemNotFound, .notAllowed, .serviceUnavailable: return .cancel
            case .forbidden, .notAuthorized, .registrationRequired, .subscriptionRequired: return .auth
            case .gone, .redirect, .remoteServerNotFound, .undefinedCondition: return .cancel
            case .internalServerError, .recipientUnavailable, .remoteServerTimeout, .resourceConstraint: return .wait
            }
        }
    }

    public enum ErrorType: String, Sendable, Hashable {
        case auth, cancel, `continue`, modify, wait
    }

    public var condition: Condition
    public var type: ErrorType
    public var text: String?
    /// An application-specific condition element (e.g. XEP-0191 `<blocked/>`).
    public var applicationCondition: XMLElement?

    public init(_ condition: Condition, type: ErrorType? = nil, text: String? = nil, applicationCondition: XMLElement? = nil) {
        self.condition = condition
        self.type = type ?? condition.defaultType
        self.text = text
        self.applicationCondition = applicationCondition
    }

    public var description: String { text.map { "\(condition.rawValue): \($0)" } ?? condition.rawValue }

    public static let badRequest = StanzaError(.badRequest)
    public static let serviceUnavailable = StanzaError(.serviceUnavailable)
    public static let featureNotImplemented = StanzaError(.featureNotImplemented)
    public static let itemNotFound = StanzaError(.itemNotFound)
    public static let forbidden = StanzaError(.forbidden)
    public static let notAllowed = StanzaError(.notAllowed)
    public static let internalServerError = StanzaError(.internalServerError)

    /// The `<error/>` child element.
    public var element: XMLElement {
        var error = XMLElement("error", xmlns: NS.client, ["type": type.rawValue])
        error.append(XMLElement(condition.rawValue, xmlns: NS.stanzaErrors))
        if let text {
            error.append(XMLElement("text", xmlns: NS.stanzaErrors).withText(text))
        }
        if let applicationCondition { error.append(applicationCondition) }
        return error
    }

    /// The error reply to `stanza`: addresses swapped, `type='error'`, original id kept.
    /// For IQ requests the original payload is dropped; for messages and presence it is kept,
    /// as RFC 6120 §8.3.1 allows, so the sender can tell which stanza bounced.
    public func reply(to stanza: XMLElement) -> XMLElement {
        var reply = XMLElement(name: stanza.name, namespace: stanza.namespace)
        if let id = stanza[attribute: "id"] { reply[attribute: "id"] = id }
        if let from = stanza[attribute: "from"] { reply[attribute: "to"] = from }
        if let to = stanza[attribute: "to"] { reply[attribute: "from"] = to }
        reply[attribute: "type"] = "error"
        if stanza.name != "iq" {
            reply.children = stanza.children.filter {
                if case .element(let child) = $0 { return child.name != "error" }
                return false
            }
        }
        var error = element
        error.namespace = stanza.namespace
        reply.append(error)
        return reply
    }
}
