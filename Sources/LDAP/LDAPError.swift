/// Everything the LDAP client throws.
///
/// Connection-level problems (`.connectionFailed`, `.tlsFailure`, `.timeout`, `.closed`,
/// `.protocolError`) are distinct from a server's answer (`.result`), so a login path can tell
/// "wrong password" (`isInvalidCredentials`) from "directory unreachable".
public enum LDAPError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The server did not answer within `LDAPConfiguration.operationTimeout` (or the TCP/TLS
    /// set-up did not finish within `connectTimeout`).
    case timeout
    /// TCP connect failed (refused, unreachable, name not resolved …).
    case connectionFailed(String)
    /// The server answered with a result code other than success.
    case result(code: Int, name: String, diagnosticMessage: String, matchedDN: String)
    /// The peer sent bytes that are not a valid LDAP message, or a message over the size limit.
    case protocolError(String)
    /// TLS could not be set up: untrusted or mismatched certificate, handshake failure, unreadable CA file.
    case tlsFailure(String)
    /// The connection is closed (by `close()`, by the server, or after an earlier fatal error).
    case closed
    /// The caller passed something the client refuses to send (an empty bind password, a bad
    /// URL, an unparsable filter). Nothing was sent to the server.
    case invalidArgument(String)

    /// Builds `.result` from a result code, filling in the RFC 4511 name.
    public static func result(code: Int, diagnosticMessage: String = "", matchedDN: String = "") -> LDAPError {
        .result(code: code, name: LDAPResultCode.name(of: code), diagnosticMessage: diagnosticMessage, matchedDN: matchedDN)
    }

    /// The LDAP result code when the server answered with an error.
    public var resultCode: Int? {
        if case .result(let code, _, _, _) = self { return code }
        return nil
    }

    /// Result code 49: wrong DN or password (also used by slapd for unknown DNs, so as not to reveal which).
    public var isInvalidCredentials: Bool { resultCode == LDAPResultCode.invalidCredentials }
    /// Result code 32: the search base or bind DN does not exist.
    public var isNoSuchObject: Bool { resultCode == LDAPResultCode.noSuchObject }
    /// RFC 4533 e-syncRefreshRequired (4096): the sync cookie is too old; do a full reload.
    public var isSyncRefreshRequired: Bool { resultCode == LDAPResultCode.syncRefreshRequired }
    public var isTimeout: Bool { self == .timeout }

    public var description: String {
        switch self {
        case .timeout: return "LDAP: the server did not answer in time"
        case .connectionFailed(let reason): return "LDAP: cannot connect: \(reason)"
        case .result(let code, let name, let message, let matchedDN):
            var text = "LDAP: \(name) (\(code))"
            if !message.isEmpty { text += ": \(message)" }
            if !matchedDN.isEmpty { text += " [matched \(matchedDN)]" }
            return text
        case .protocolError(let reason): return "LDAP: protocol error: \(reason)"
        case .tlsFailure(let reason): return "LDAP: TLS failure: \(reason)"
        case .closed: return "LDAP: the connection is closed"
        case .invalidArgument(let reason): return "LDAP: \(reason)"
        }
    }
}

/// RFC 4511 §4.1.9 result codes (plus RFC 4533's e-syncRefreshRequired).
public enum LDAPResultCode {
    public static let success = 0
    public static let operationsError = 1
    public static let protocolError = 2
    public static let timeLimitExceeded = 3
    public static let sizeLimitExceeded = 4
    public static let noSuchObject = 32
    public static let invalidCredentials = 49
    public static let insufficientAccessRights = 50
    public static let busy = 51
    public static let unavailable = 52
    public static let unwillingToPerform = 53
    public static let syncRefreshRequired = 4096

    private static let names: [Int: String] = [
        0: "success", 1: "operationsError", 2: "protocolError", 3: "timeLimitExceeded",
        4: "sizeLimitExceeded", 5: "compareFalse", 6: "compareTrue", 7: "authMethodNotSupported",
        8: "strongerAuthRequired", 10: "referral", 11: "adminLimitExceeded",
        12: "unavailableCriticalExtension", 13: "confidentialityRequired", 14: "saslBindInProgress",
        16: "noSuchAttribute", 17: "undefinedAttributeType", 18: "inappropriateMatching",
        19: "constraintViolation", 20: "attributeOrValueExists", 21: "invalidAttributeSyntax",
        32: "noSuchObject", 33: "aliasProblem", 34: "invalidDNSyntax", 36: "aliasDereferencingProblem",
        48: "inappropriateAuthentication", 49: "invalidCredentials", 50: "insufficientAccessRights",
        51: "busy", 52: "unavailable", 53: "unwillingToPerform", 54: "loopDetect",
        64: "namingViolation", 65: "objectClassViolation", 66: "notAllowedOnNonLeaf",
        67: "notAllowedOnRDN", 68: "entryAlreadyExists", 69: "objectClassModsProhibited",
        71: "affectsMultipleDSAs", 80: "other", 118: "canceled", 119: "noSuchOperation",
        120: "tooLate", 121: "cannotCancel", 4096: "e-syncRefreshRequired",
    ]

    /// The RFC name of a result code, or "unknown" for codes not listed there.
    public static func name(of code: Int) -> String { names[code] ?? "unknown" }
}
