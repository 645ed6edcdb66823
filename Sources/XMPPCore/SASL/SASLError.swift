/// A SASL failure, as reported in an RFC 6120 §6.5 `<failure/>` element.
///
/// Compare conditions with `error.condition == .notAuthorized`; the optional
/// ``text`` is advisory (it goes into the `<text/>` child) and takes part in
/// equality, so `error == .notAuthorized` only matches errors without text.
public struct SASLError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The defined SASL failure conditions of RFC 6120 §6.5.
    public enum Condition: String, Hashable, Sendable, CaseIterable, Codable {
        /// §6.5.1: the receiving entity acknowledges that the exchange was aborted.
        case aborted = "aborted"
        /// §6.5.2: the account has been temporarily disabled.
        case accountDisabled = "account-disabled"
        /// §6.5.3: the credentials have expired.
        case credentialsExpired = "credentials-expired"
        /// §6.5.4: the mechanism requires a TLS-protected stream.
        case encryptionRequired = "encryption-required"
        /// §6.5.5: data was not correctly base64-encoded.
        case incorrectEncoding = "incorrect-encoding"
        /// §6.5.6: the authzid is malformed or the authcid may not act for it.
        case invalidAuthzid = "invalid-authzid"
        /// §6.5.7: the mechanism is not supported.
        case invalidMechanism = "invalid-mechanism"
        /// §6.5.8: the request is syntactically malformed.
        case malformedRequest = "malformed-request"
        /// §6.5.9: the mechanism is weaker than server policy allows.
        case mechanismTooWeak = "mechanism-too-weak"
        /// §6.5.10: the credentials are wrong (or the user does not exist).
        case notAuthorized = "not-authorized"
        /// §6.5.11: a temporary server-side error; the client may retry.
        case temporaryAuthFailure = "temporary-auth-failure"
    }

    /// The failure condition.
    public let condition: Condition
    /// Optional human-readable text for the `<text/>` child. Never reveals
    /// whether an account exists.
    public let text: String?

    /// Creates an error with the given condition and optional text.
    public init(_ condition: Condition, text: String? = nil) {
        self.condition = condition
        self.text = text
    }

    /// The local name of the condition's child element of `<failure/>`, e.g. "not-authorized".
    public var elementName: String {
        condition.rawValue
    }

    /// The condition's element name, followed by the text if any.
    public var description: String {
        if let text { return "\(condition.rawValue): \(text)" }
        return condition.rawValue
    }

    /// `<aborted/>` without text.
    public static let aborted = SASLError(.aborted)
    /// `<account-disabled/>` without text.
    public static let accountDisabled = SASLError(.accountDisabled)
    /// `<credentials-expired/>` without text.
    public static let credentialsExpired = SASLError(.credentialsExpired)
    /// `<encryption-required/>` without text.
    public static let encryptionRequired = SASLError(.encryptionRequired)
    /// `<incorrect-encoding/>` without text.
    public static let incorrectEncoding = SASLError(.incorrectEncoding)
    /// `<invalid-authzid/>` without text.
    public static let invalidAuthzid = SASLError(.invalidAuthzid)
    /// `<invalid-mechanism/>` without text.
    public static let invalidMechanism = SASLError(.invalidMechanism)
    /// `<malformed-request/>` without text.
    public static let malformedRequest = SASLError(.malformedRequest)
    /// `<mechanism-too-weak/>` without text.
    public static let mechanismTooWeak = SASLError(.mechanismTooWeak)
    /// `<not-authorized/>` without text.
    public static let notAuthorized = SASLError(.notAuthorized)
    /// `<temporary-auth-failure/>` without text.
    public static let temporaryAuthFailure = SASLError(.temporaryAuthFailure)
}
