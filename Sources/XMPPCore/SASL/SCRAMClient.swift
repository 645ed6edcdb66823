import Foundation

/// The client side of a SCRAM exchange (RFC 5802, RFC 7677), without channel
/// binding (GS2 flag "n"). A pure state machine, used by the benchmark load
/// generator and by tests.
///
/// Flow: ``clientFirst()`` → send; ``receiveServerFirst(_:)`` with the challenge →
/// send the returned client-final-message; ``receiveServerFinal(_:)`` with the
/// `<success/>` payload to authenticate the server.
///
/// PBKDF2 is the only expensive step. To log in many users that share a
/// password and salt, either pass a shared ``SCRAMSaltedPasswordCache`` or
/// precompute ``SCRAMCredentials/saltedPassword(password:salt:iterations:hash:)``
/// and use ``init(hash:username:saltedPassword:salt:iterations:authzid:nonce:)``.
public struct SCRAMClient: Sendable {
    /// The mechanism's hash function.
    public let hash: SCRAMHash
    /// Whether the server proved knowledge of the credentials in its final message.
    public private(set) var isAuthenticated = false

    private enum Secret: Sendable {
        case password(String, cache: SCRAMSaltedPasswordCache?)
        case salted([UInt8], salt: [UInt8], iterations: Int)
    }

    private enum State: Sendable {
        case initial
        case sentClientFirst
        case sentClientFinal(expectedServerSignature: [UInt8])
        case succeeded
        case failed
    }

    private let secret: Secret
    private let gs2Header: [UInt8]
    private let clientFirstBare: [UInt8]
    private let clientNonce: [UInt8]
    private var state: State = .initial

    /// Creates a client that will run PBKDF2 on `password` (or find the result in `saltedPasswordCache`).
    ///
    /// - Parameters:
    ///   - username: the authcid; "," and "=" are escaped as the protocol requires.
    ///   - password: prepared with the OpaqueString profile before use.
    ///   - authzid: an authorization identity to request, usually nil.
    ///   - nonce: the client nonce (printable ASCII without ","); random if nil.
    ///   - saltedPasswordCache: a cache shared between clients, or nil.
    public init(
        hash: SCRAMHash,
        username: String,
        password: String,
        authzid: String? = nil,
        nonce: String? = nil,
        saltedPasswordCache: SCRAMSaltedPasswordCache? = nil
    ) {
        self.init(hash: hash, username: username, secret: .password(password, cache: saltedPasswordCache), authzid: authzid, nonce: nonce)
    }

    /// Creates a client from a precomputed SaltedPassword for a known salt and
    /// iteration count. If the server announces a different salt or count,
    /// ``receiveServerFirst(_:)`` throws.
    public init(
        hash: SCRAMHash,
        username: String,
        saltedPassword: [UInt8],
        salt: [UInt8],
        iterations: Int,
        authzid: String? = nil,
        nonce: String? = nil
    ) {
        self.init(hash: hash, username: username, secret: .salted(saltedPassword, salt: salt, iterations: iterations), authzid: authzid, nonce: nonce)
    }

    private init(hash: SCRAMHash, username: String, secret: Secret, authzid: String?, nonce: String?) {
        self.hash = hash
        self.secret = secret
        var header: [UInt8] = Array("n,".utf8)
        if let authzid {
            header.append(contentsOf: "a=".utf8)
            header.append(contentsOf: SCRAMSupport.encodeSASLName(authzid))
        }
        header.append(UInt8(ascii: ","))
        gs2Header = header
        clientNonce = Array((nonce ?? SCRAMSupport.randomNonce()).utf8)
        var bare: [UInt8] = Array("n=".utf8)
        bare.append(contentsOf: SCRAMSupport.encodeSASLName(username))
        bare.append(contentsOf: ",r=".utf8)
        bare.append(contentsOf: clientNonce)
        clientFirstBare = bare
    }

    /// The client-first-message, e.g. "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL".
    public mutating func clientFirst() -> [UInt8] {
        if case .initial = state { state = .sentClientFirst }
        return gs2Header + clientFirstBare
    }

    /// Processes the server-first-message and returns the client-final-message
    /// "c=<gs2 header>,r=<nonce>,p=<ClientProof>".
    ///
    /// - Throws: ``SASLError`` `.malformedRequest` if the message is malformed, its
    ///   nonce does not extend ours, it has a mandatory extension, or it does not
    ///   match a precomputed salt/iteration count; password preparation errors.
    public mutating func receiveServerFirst(_ message: [UInt8]) throws(SASLError) -> [UInt8] {
        guard case .sentClientFirst = state else {
            state = .failed
            throw SASLError(.malformedRequest, text: "unexpected server-first-message")
        }
        state = .failed
        let fields = message.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false)
        guard fields.count >= 3 else { throw SASLError(.malformedRequest, text: "server-first-message is incomplete") }
        guard let nonceAttribute = SCRAMSupport.attribute(fields[0]) else {
            throw SASLError(.malformedRequest, text: "invalid nonce")
        }
        if nonceAttribute.name == UInt8(ascii: "m") {
            throw SASLError(.malformedRequest, text: "unsupported mandatory extension")
        }
        let nonce = nonceAttribute.value
        guard nonceAttribute.name == UInt8(ascii: "r"), nonce.count > clientNonce.count,
              nonce.starts(with: clientNonce), SCRAMSupport.isPrintable(nonce) else {
            throw SASLError(.malformedRequest, text: "invalid nonce")
        }
        guard let saltAttribute = SCRAMSupport.attribute(fields[1]), saltAttribute.name == UInt8(ascii: "s"),
              let salt = SCRAMSupport.base64Decode(saltAttribute.value), !salt.isEmpty else {
            throw SASLError(.malformedRequest, text: "invalid salt")
        }
        guard let iterationAttribute = SCRAMSupport.attribute(fields[2]), iterationAttribute.name == UInt8(ascii: "i"),
              let iterationText = SCRAMSupport.utf8String(iterationAttribute.value),
              iterationAttribute.value.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              let iterations = Int(iterationText), iterations >= 1 else {
            throw SASLError(.malformedRequest, text: "invalid iteration count")
        }

        let saltedPassword: [UInt8]
        switch secret {
        case .password(let password, let cache):
            if let cache {
                saltedPassword = try cache.saltedPassword(password: password, salt: salt, iterations: iterations, hash: hash)
            } else {
                saltedPassword = try SCRAMCredentials.saltedPassword(password: password, salt: salt, iterations: iterations, hash: hash)
            }
        case .salted(let precomputed, let expectedSalt, let expectedIterations):
            guard salt == expectedSalt, iterations == expectedIterations else {
                throw SASLError(.malformedRequest, text: "server salt or iteration count differs from the precomputed one")
            }
            saltedPassword = precomputed
        }

        var withoutProof: [UInt8] = Array("c=".utf8)
        withoutProof.append(contentsOf: SCRAMSupport.base64Encode(gs2Header))
        withoutProof.append(contentsOf: ",r=".utf8)
        withoutProof.append(contentsOf: nonce)

        var authMessage = clientFirstBare
        authMessage.append(UInt8(ascii: ","))
        authMessage.append(contentsOf: message)
        authMessage.append(UInt8(ascii: ","))
        authMessage.append(contentsOf: withoutProof)

        let clientKey = hash.hmac(key: saltedPassword, data: SCRAMSupport.clientKeyLabel)
        let storedKey = hash.digest(clientKey)
        let clientSignature = hash.hmac(key: storedKey, data: authMessage)
        let proof = SCRAMSupport.xor(clientKey, clientSignature)
        let serverKey = hash.hmac(key: saltedPassword, data: SCRAMSupport.serverKeyLabel)
        let serverSignature = hash.hmac(key: serverKey, data: authMessage)

        var result = withoutProof
        result.append(contentsOf: ",p=".utf8)
        result.append(contentsOf: SCRAMSupport.base64Encode(proof))
        state = .sentClientFinal(expectedServerSignature: serverSignature)
        return result
    }

    /// Verifies the server-final-message "v=<ServerSignature>".
    ///
    /// - Throws: ``SASLError`` `.notAuthorized` if the server reported an error ("e=…",
    ///   given as the text) or its signature is wrong; `.malformedRequest` otherwise.
    public mutating func receiveServerFinal(_ message: [UInt8]) throws(SASLError) {
        guard case .sentClientFinal(let expected) = state else {
            state = .failed
            throw SASLError(.malformedRequest, text: "unexpected server-final-message")
        }
        state = .failed
        let fields = message.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false)
        guard let first = fields.first, let attribute = SCRAMSupport.attribute(first) else {
            throw SASLError(.malformedRequest, text: "invalid server-final-message")
        }
        if attribute.name == UInt8(ascii: "e") {
            throw SASLError(.notAuthorized, text: SCRAMSupport.utf8String(attribute.value) ?? "server error")
        }
        guard attribute.name == UInt8(ascii: "v"), let signature = SCRAMSupport.base64Decode(attribute.value) else {
            throw SASLError(.malformedRequest, text: "invalid server-final-message")
        }
        guard SCRAMSupport.constantTimeEqual(signature, expected) else {
            throw SASLError(.notAuthorized, text: "server signature mismatch")
        }
        state = .succeeded
        isAuthenticated = true
    }
}

/// A thread-safe cache of SaltedPassword values keyed by
/// (hash, password, salt, iterations), shared between ``SCRAMClient``s so that
/// a load generator logging in many accounts with the same password and salt
/// runs PBKDF2 once. Holds passwords in memory: meant for tools and tests.
public final class SCRAMSaltedPasswordCache: @unchecked Sendable {
    private struct Key: Hashable {
        var hash: SCRAMHash
        var password: String
        var salt: [UInt8]
        var iterations: Int
    }

    private let lock = NSLock()
    private var storage: [Key: [UInt8]] = [:]

    /// Creates an empty cache.
    public init() {}

    /// The number of cached entries.
    public var count: Int {
        lock.lock()
        defer { lock.unlock() }
        return storage.count
    }

    /// Returns the cached SaltedPassword, computing and storing it on a miss
    /// (outside the lock, so concurrent misses may compute it twice).
    public func saltedPassword(password: String, salt: [UInt8], iterations: Int, hash: SCRAMHash) throws(SASLError) -> [UInt8] {
        let key = Key(hash: hash, password: password, salt: salt, iterations: iterations)
        lock.lock()
        let cached = storage[key]
        lock.unlock()
        if let cached { return cached }
        let computed = try SCRAMCredentials.saltedPassword(password: password, salt: salt, iterations: iterations, hash: hash)
        lock.lock()
        storage[key] = computed
        lock.unlock()
        return computed
    }
}
