/// The server side of a SCRAM exchange (RFC 5802, RFC 7677) as a pure state
/// machine: it parses and produces the SCRAM messages (the decoded payloads
/// of `<auth/>`, `<challenge/>`, `<response/>` and `<success/>`) and does no I/O.
///
/// Flow:
/// 1. ``receiveClientFirst(_:)`` with the client-first-message; look the
///    returned username up in storage;
/// 2. ``serverFirst(credentials:fakeSaltKey:fakeIterations:)`` with the stored
///    credentials, or `nil` if there is no such user; send the result as a challenge;
/// 3. ``receiveClientFinal(_:)`` with the client-final-message; on success send
///    the returned server-final-message in `<success/>`.
///
/// Any thrown error ends the exchange; later calls fail with `.malformedRequest`.
/// Channel binding (the "-PLUS" variants) is not supported: a "p=" GS2 flag is
/// rejected, "n" and "y" are accepted. The authzid, if any, is returned but not
/// checked: the caller must decide whether the user may act as it.
///
/// CPU cost after the client-first-message: one nonce, then for the final
/// message two HMACs and one hash (plus one HMAC for unknown users).
public struct SCRAMServer: Sendable {
    /// The mechanism's hash function.
    public let hash: SCRAMHash
    /// The authentication identity from the client-first-message, once received.
    public private(set) var username: String?
    /// The authorization identity from the client-first-message, if one was given.
    public private(set) var authzid: String?
    /// Whether the exchange completed with a valid client proof.
    public private(set) var isAuthenticated = false

    /// Longest client message accepted, in bytes.
    public static let maximumMessageLength = 8192

    private let nonceGenerator: @Sendable () -> String
    private var state: State = .awaitingClientFirst

    private struct ClientFirst: Sendable {
        var gs2Header: [UInt8]
        var bare: [UInt8]
        var clientNonce: ArraySlice<UInt8>
        var username: String
    }

    private struct Exchange: Sendable {
        var gs2Header: [UInt8]
        var clientFirstBare: [UInt8]
        var serverFirst: [UInt8]
        var nonce: [UInt8]
        var storedKey: [UInt8]
        var serverKey: [UInt8]
        var userExists: Bool
    }

    private enum State: Sendable {
        case awaitingClientFirst
        case awaitingServerFirst(ClientFirst)
        case awaitingClientFinal(Exchange)
        case succeeded
        case failed
    }

    /// Creates a server for one exchange.
    ///
    /// - Parameters:
    ///   - hash: SHA-1 for "SCRAM-SHA-1", SHA-256 for "SCRAM-SHA-256".
    ///   - nonceGenerator: produces the server's part of the nonce; its result
    ///     must be non-empty printable ASCII without ",". Inject a fixed value in tests.
    public init(hash: SCRAMHash, nonceGenerator: @escaping @Sendable () -> String = SCRAMServer.randomNonce) {
        self.hash = hash
        self.nonceGenerator = nonceGenerator
    }

    /// The default nonce generator: 18 random bytes, base64-encoded (24 characters).
    public static func randomNonce() -> String {
        SCRAMSupport.randomNonce()
    }

    /// Parses the client-first-message, e.g. "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL".
    ///
    /// The username and authzid are returned decoded ("=2C" → ",", "=3D" → "=")
    /// but otherwise as sent; preparing them (e.g. as a JID localpart) is up to the caller.
    ///
    /// - Throws: ``SASLError`` `.malformedRequest` for syntax errors, invalid UTF-8,
    ///   a "p=" channel-binding flag, or an "m=" mandatory extension.
    public mutating func receiveClientFirst(_ message: [UInt8]) throws(SASLError) -> (username: String, authzid: String?) {
        guard case .awaitingClientFirst = state else {
            state = .failed
            throw SASLError(.malformedRequest, text: "unexpected client-first-message")
        }
        state = .failed
        let parsed = try SCRAMServer.parseClientFirst(message)
        username = parsed.first.username
        authzid = parsed.authzid
        state = .awaitingServerFirst(parsed.first)
        return (parsed.first.username, parsed.authzid)
    }

    /// Builds the server-first-message "r=<nonce>,s=<salt>,i=<iterations>".
    ///
    /// - Parameters:
    ///   - credentials: the user's stored credentials for this ``hash``, or `nil`
    ///     if the user does not exist (credentials for another hash count as absent).
    ///     Then a salt is derived from `fakeSaltKey` and the username, so that
    ///     repeated attempts see the same salt, the exchange proceeds normally, and
    ///     ``receiveClientFinal(_:)`` fails with `.notAuthorized` exactly as for a
    ///     wrong password.
    ///   - fakeSaltKey: a server-wide secret (e.g. 32 random bytes kept in the data directory).
    ///   - fakeIterations: the iteration count advertised for unknown users; use the
    ///     same value real accounts get.
    /// - Returns: the message bytes, or an empty array if called out of order (the
    ///   exchange then fails at ``receiveClientFinal(_:)``).
    public mutating func serverFirst(
        credentials: SCRAMCredentials?,
        fakeSaltKey: [UInt8],
        fakeIterations: Int = SCRAMCredentials.defaultIterations
    ) -> [UInt8] {
        guard case .awaitingServerFirst(let first) = state else {
            state = .failed
            return []
        }
        var nonce = Array(first.clientNonce)
        nonce.append(contentsOf: nonceGenerator().utf8)

        let salt: [UInt8]
        let iterations: Int
        let storedKey: [UInt8]
        let serverKey: [UInt8]
        let userExists: Bool
        if let credentials, credentials.hash == hash, !credentials.salt.isEmpty, credentials.iterations >= 1 {
            salt = credentials.salt
            iterations = credentials.iterations
            storedKey = credentials.storedKey
            serverKey = credentials.serverKey
            userExists = true
        } else {
            var input = Array("switchboard-scram-fake-salt\u{0}".utf8)
            input.append(contentsOf: hash.mechanismName.utf8)
            input.append(0)
            // Use the username as the account lookup would see it (a prepared
            // localpart), so "Ghost" and "ghost" get the same fake salt just as
            // they would share a real one.
            input.append(contentsOf: SCRAMServer.canonicalUsername(first.username).utf8)
            let derived = SCRAMHash.sha256.hmac(key: fakeSaltKey, data: input)
            salt = Array(derived.prefix(16))
            iterations = max(fakeIterations, 1)
            // Any key works: the proof is rejected regardless. Same shape as a real one.
            storedKey = Array(derived.suffix(16)) + Array(repeating: 0, count: hash.byteCount - 16)
            serverKey = storedKey
            userExists = false
        }

        var message: [UInt8] = []
        message.reserveCapacity(nonce.count + salt.count * 2 + 20)
        message.append(contentsOf: "r=".utf8)
        message.append(contentsOf: nonce)
        message.append(contentsOf: ",s=".utf8)
        message.append(contentsOf: SCRAMSupport.base64Encode(salt))
        message.append(contentsOf: ",i=".utf8)
        message.append(contentsOf: String(iterations).utf8)

        state = .awaitingClientFinal(Exchange(
            gs2Header: first.gs2Header,
            clientFirstBare: first.bare,
            serverFirst: message,
            nonce: nonce,
            storedKey: storedKey,
            serverKey: serverKey,
            userExists: userExists
        ))
        return message
    }

    /// Verifies the client-final-message ("c=biws,r=<nonce>,p=<proof>") and
    /// returns the server-final-message ("v=<ServerSignature>").
    ///
    /// - Throws: ``SASLError`` `.notAuthorized` (without text) for a wrong proof or an
    ///   unknown user; `.malformedRequest` for syntax errors, a channel-binding value
    ///   that does not match the GS2 header, or a nonce that does not match.
    public mutating func receiveClientFinal(_ message: [UInt8]) throws(SASLError) -> [UInt8] {
        guard case .awaitingClientFinal(let exchange) = state else {
            state = .failed
            throw SASLError(.malformedRequest, text: "unexpected client-final-message")
        }
        state = .failed
        guard message.count <= SCRAMServer.maximumMessageLength else {
            throw SASLError(.malformedRequest, text: "message too long")
        }
        let fields = message.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false)
        guard fields.count >= 3 else { throw SASLError(.malformedRequest, text: "client-final-message is incomplete") }

        guard let channelBinding = SCRAMSupport.attribute(fields[0]), channelBinding.name == UInt8(ascii: "c"),
              let cbindInput = SCRAMSupport.base64Decode(channelBinding.value) else {
            throw SASLError(.malformedRequest, text: "missing or invalid channel binding")
        }
        guard cbindInput == exchange.gs2Header else {
            throw SASLError(.malformedRequest, text: "channel binding does not match")
        }
        guard let nonce = SCRAMSupport.attribute(fields[1]), nonce.name == UInt8(ascii: "r") else {
            throw SASLError(.malformedRequest, text: "missing nonce")
        }
        guard nonce.value.elementsEqual(exchange.nonce) else {
            throw SASLError(.malformedRequest, text: "nonce does not match")
        }
        for field in fields[2..<(fields.count - 1)] {
            guard SCRAMSupport.attribute(field) != nil else { throw SASLError(.malformedRequest, text: "invalid attribute") }
        }
        let proofField = fields[fields.count - 1]
        guard let proofAttribute = SCRAMSupport.attribute(proofField), proofAttribute.name == UInt8(ascii: "p"),
              let proof = SCRAMSupport.base64Decode(proofAttribute.value), proof.count == hash.byteCount else {
            throw SASLError(.malformedRequest, text: "missing or invalid proof")
        }

        // AuthMessage = client-first-message-bare "," server-first-message "," client-final-message-without-proof
        let withoutProofLength = proofField.startIndex - 1
        var authMessage: [UInt8] = []
        authMessage.reserveCapacity(exchange.clientFirstBare.count + exchange.serverFirst.count + withoutProofLength + 2)
        authMessage.append(contentsOf: exchange.clientFirstBare)
        authMessage.append(UInt8(ascii: ","))
        authMessage.append(contentsOf: exchange.serverFirst)
        authMessage.append(UInt8(ascii: ","))
        authMessage.append(contentsOf: message[0..<withoutProofLength])

        let clientSignature = hash.hmac(key: exchange.storedKey, data: authMessage)
        let clientKey = SCRAMSupport.xor(proof, clientSignature)
        let proofValid = SCRAMSupport.constantTimeEqual(hash.digest(clientKey), exchange.storedKey)
        guard proofValid && exchange.userExists else { throw .notAuthorized }

        let serverSignature = hash.hmac(key: exchange.serverKey, data: authMessage)
        var result: [UInt8] = Array("v=".utf8)
        result.append(contentsOf: SCRAMSupport.base64Encode(serverSignature))
        state = .succeeded
        isAuthenticated = true
        return result
    }

    /// The username prepared as a JID localpart, or unchanged if it is not a valid one.
    private static func canonicalUsername(_ username: String) -> String {
        (try? JID(localpart: username, domainpart: "x", resourcepart: nil).localpart) ?? username
    }

    // MARK: Parsing

    private static func parseClientFirst(_ message: [UInt8]) throws(SASLError) -> (first: ClientFirst, authzid: String?) {
        guard message.count <= maximumMessageLength else { throw SASLError(.malformedRequest, text: "message too long") }
        let fields = message.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false)
        guard fields.count >= 4 else { throw SASLError(.malformedRequest, text: "client-first-message is incomplete") }

        let flag = fields[0]
        if flag.starts(with: "p=".utf8) {
            throw SASLError(.malformedRequest, text: "channel binding is not supported")
        }
        guard flag.count == 1, flag.first == UInt8(ascii: "n") || flag.first == UInt8(ascii: "y") else {
            throw SASLError(.malformedRequest, text: "invalid GS2 channel binding flag")
        }

        var authzid: String?
        if !fields[1].isEmpty {
            guard let attribute = SCRAMSupport.attribute(fields[1]), attribute.name == UInt8(ascii: "a"),
                  let decoded = SCRAMSupport.decodeSASLName(attribute.value), !decoded.isEmpty else {
                throw SASLError(.malformedRequest, text: "invalid authzid")
            }
            authzid = decoded
        }
        let gs2HeaderLength = fields[1].endIndex + 1

        guard let user = SCRAMSupport.attribute(fields[2]) else {
            throw SASLError(.malformedRequest, text: "invalid username")
        }
        if user.name == UInt8(ascii: "m") {
            throw SASLError(.malformedRequest, text: "unsupported mandatory extension")
        }
        guard user.name == UInt8(ascii: "n"), let username = SCRAMSupport.decodeSASLName(user.value), !username.isEmpty else {
            throw SASLError(.malformedRequest, text: "invalid username")
        }
        guard let nonce = SCRAMSupport.attribute(fields[3]), nonce.name == UInt8(ascii: "r"),
              !nonce.value.isEmpty, SCRAMSupport.isPrintable(nonce.value) else {
            throw SASLError(.malformedRequest, text: "invalid nonce")
        }
        for field in fields[4...] {
            guard SCRAMSupport.attribute(field) != nil else { throw SASLError(.malformedRequest, text: "invalid attribute") }
        }
        let first = ClientFirst(
            gs2Header: Array(message[0..<gs2HeaderLength]),
            bare: Array(message[gs2HeaderLength...]),
            clientNonce: nonce.value,
            username: username
        )
        return (first, authzid)
    }
}
