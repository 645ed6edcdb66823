/// The SASL PLAIN message (RFC 4616): `[authzid] NUL authcid NUL passwd`.
public enum PLAINMessage {
    /// Longest message accepted, in bytes.
    public static let maximumLength = 1024

    /// Splits a PLAIN message into its three fields.
    ///
    /// The fields are returned as sent (valid UTF-8, not yet prepared); an empty
    /// authzid becomes `nil`. Check the password with ``SCRAMCredentials/verify(password:)``.
    ///
    /// - Throws: ``SASLError`` `.malformedRequest` if the message is longer than
    ///   ``maximumLength``, does not have exactly two NUL separators, has an empty
    ///   authcid or password, or is not valid UTF-8.
    public static func parse(_ bytes: [UInt8]) throws(SASLError) -> (authzid: String?, authcid: String, password: String) {
        guard bytes.count <= maximumLength else { throw SASLError(.malformedRequest, text: "message too long") }
        let fields = bytes.split(separator: 0, maxSplits: 2, omittingEmptySubsequences: false)
        guard fields.count == 3 else { throw SASLError(.malformedRequest, text: "expected authzid NUL authcid NUL password") }
        guard !fields[1].isEmpty else { throw SASLError(.malformedRequest, text: "empty authcid") }
        guard !fields[2].isEmpty else { throw SASLError(.malformedRequest, text: "empty password") }
        guard let authcid = SCRAMSupport.utf8String(fields[1]),
              let password = SCRAMSupport.utf8String(fields[2]) else {
            // A third NUL inside the password also ends up here.
            throw SASLError(.malformedRequest, text: "invalid UTF-8 or NUL")
        }
        var authzid: String?
        if !fields[0].isEmpty {
            guard let decoded = SCRAMSupport.utf8String(fields[0]) else {
                throw SASLError(.malformedRequest, text: "invalid UTF-8 in authzid")
            }
            authzid = decoded
        }
        return (authzid, authcid, password)
    }

    /// Builds a PLAIN message (for clients and tests).
    public static func encode(authzid: String? = nil, authcid: String, password: String) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity((authzid?.utf8.count ?? 0) + authcid.utf8.count + password.utf8.count + 2)
        if let authzid { bytes.append(contentsOf: authzid.utf8) }
        bytes.append(0)
        bytes.append(contentsOf: authcid.utf8)
        bytes.append(0)
        bytes.append(contentsOf: password.utf8)
        return bytes
    }
}
