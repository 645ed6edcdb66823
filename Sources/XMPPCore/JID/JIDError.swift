/// Why a string is not a valid JID (RFC 7622).
///
/// Compare against the static members, e.g. `error == .emptyLocalpart`.
/// Each member names the part of the JID that is at fault.
public struct JIDError: Error, Hashable, Sendable, CustomStringConvertible {
    private enum Code: Hashable, Sendable {
        case emptyLocalpart
        case emptyDomain
        case emptyResourcepart
        case localpartTooLong
        case domainTooLong
        case resourcepartTooLong
        case invalidLocalpartCharacter
        case invalidDomainCharacter
        case invalidResourcepartCharacter
        case invalidDomainLabel
        case invalidIPLiteral
    }

    private let code: Code

    private init(_ code: Code) {
        self.code = code
    }

    /// An "@" was present but nothing came before it, or an empty localpart was passed.
    public static let emptyLocalpart = JIDError(.emptyLocalpart)
    /// The domainpart is missing or empty (e.g. "juliet@" or "/resource").
    public static let emptyDomain = JIDError(.emptyDomain)
    /// A "/" was present but nothing came after it, or an empty resourcepart was passed.
    public static let emptyResourcepart = JIDError(.emptyResourcepart)
    /// The prepared localpart is longer than 1023 UTF-8 bytes.
    public static let localpartTooLong = JIDError(.localpartTooLong)
    /// The prepared domainpart is longer than 1023 UTF-8 bytes.
    public static let domainTooLong = JIDError(.domainTooLong)
    /// The prepared resourcepart is longer than 1023 UTF-8 bytes.
    public static let resourcepartTooLong = JIDError(.resourcepartTooLong)
    /// The localpart contains a space, a control character, one of `" & ' / : < > @`,
    /// or a character the PRECIS IdentifierClass does not allow.
    public static let invalidLocalpartCharacter = JIDError(.invalidLocalpartCharacter)
    /// The domainpart contains a character that is not allowed in a domain name.
    public static let invalidDomainCharacter = JIDError(.invalidDomainCharacter)
    /// The resourcepart contains a control character, a leading or trailing space,
    /// or a character the PRECIS FreeformClass does not allow.
    public static let invalidResourcepartCharacter = JIDError(.invalidResourcepartCharacter)
    /// A label of the domainpart is empty, longer than 63 octets, or a malformed A-label.
    public static let invalidDomainLabel = JIDError(.invalidDomainLabel)
    /// The domainpart starts with "[" but is not a valid bracketed IPv6 address.
    public static let invalidIPLiteral = JIDError(.invalidIPLiteral)

    /// A human-readable explanation of what is wrong.
    public var description: String {
        switch code {
        case .emptyLocalpart: return "JID localpart is empty"
        case .emptyDomain: return "JID domainpart is empty"
        case .emptyResourcepart: return "JID resourcepart is empty"
        case .localpartTooLong: return "JID localpart is longer than 1023 bytes"
        case .domainTooLong: return "JID domainpart is longer than 1023 bytes"
        case .resourcepartTooLong: return "JID resourcepart is longer than 1023 bytes"
        case .invalidLocalpartCharacter: return "JID localpart contains a character that is not allowed"
        case .invalidDomainCharacter: return "JID domainpart contains a character that is not allowed"
        case .invalidResourcepartCharacter: return "JID resourcepart contains a character that is not allowed"
        case .invalidDomainLabel: return "JID domainpart has an empty, over-long or malformed label"
        case .invalidIPLiteral: return "JID domainpart is not a valid IP literal"
        }
    }
}
