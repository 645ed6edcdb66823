import Foundation

/// What a server stores for one user and one SCRAM hash (RFC 5802 §3):
/// the salt, the iteration count, StoredKey and ServerKey. The password
/// itself is never stored.
public struct SCRAMCredentials: Hashable, Sendable, Codable {
    /// The hash these keys were derived with.
    public var hash: SCRAMHash
    /// The per-user salt.
    public var salt: [UInt8]
    /// The PBKDF2 iteration count.
    public var iterations: Int
    /// StoredKey = H(HMAC(SaltedPassword, "Client Key")).
    public var storedKey: [UInt8]
    /// ServerKey = HMAC(SaltedPassword, "Server Key").
    public var serverKey: [UInt8]

    /// The iteration count used by ``generate(password:hash:iterations:saltLength:)`` by default.
    public static let defaultIterations = 4096

    /// Creates credentials from stored values.
    public init(hash: SCRAMHash, salt: [UInt8], iterations: Int, storedKey: [UInt8], serverKey: [UInt8]) {
        self.hash = hash
        self.salt = salt
        self.iterations = iterations
        self.storedKey = storedKey
        self.serverKey = serverKey
    }

    /// Derives credentials from a password: the password is prepared with the
    /// OpaqueString profile, then SaltedPassword = PBKDF2-HMAC-H(password, salt, iterations)
    /// (BoringSSL), from which StoredKey and ServerKey follow.
    ///
    /// - Throws: ``SASLError`` `.malformedRequest` if the password is empty or has
    ///   disallowed characters, or if `salt` is empty or `iterations < 1`.
    public static func derive(password: String, salt: [UInt8], iterations: Int, hash: SCRAMHash) throws(SASLError) -> SCRAMCredentials {
        let salted = try saltedPassword(password: password, salt: salt, iterations: iterations, hash: hash)
        return derive(saltedPassword: salted, salt: salt, iterations: iterations, hash: hash)
    }

    /// Derives credentials from an already computed SaltedPassword (see
    /// ``saltedPassword(password:salt:iterations:hash:)``). Costs two HMACs and one hash.
    public static func derive(saltedPassword: [UInt8], salt: [UInt8], iterations: Int, hash: SCRAMHash) -> SCRAMCredentials {
        let clientKey = hash.hmac(key: saltedPassword, data: SCRAMSupport.clientKeyLabel)
        return SCRAMCredentials(
            hash: hash,
            salt: salt,
            iterations: iterations,
            storedKey: hash.digest(clientKey),
            serverKey: hash.hmac(key: saltedPassword, data: SCRAMSupport.serverKeyLabel)
        )
    }

    /// Derives credentials for a new password with a fresh random salt.
    ///
    /// - Throws: ``SASLError`` `.malformedRequest` if the password is not acceptable.
    public static func generate(password: String, hash: SCRAMHash, iterations: Int = defaultIterations, saltLength: Int = 16) throws(SASLError) -> SCRAMCredentials {
        try derive(password: password, salt: SCRAMSupport.randomBytes(count: max(saltLength, 1)), iterations: iterations, hash: hash)
    }

    /// SaltedPassword = Hi(Normalize(password), salt, iterations), the expensive
    /// step of SCRAM (PBKDF2 in BoringSSL). The result depends only on
    /// (password, salt, iterations, hash), so callers such as load generators
    /// may cache it and pass it to ``SCRAMClient/init(hash:username:saltedPassword:salt:iterations:authzid:nonce:)``.
    ///
    /// - Throws: ``SASLError`` `.malformedRequest` if the password is empty or has
    ///   disallowed characters, or if `salt` is empty or `iterations < 1`.
    public static func saltedPassword(password: String, salt: [UInt8], iterations: Int, hash: SCRAMHash) throws(SASLError) -> [UInt8] {
        guard !salt.isEmpty else { throw SASLError(.malformedRequest, text: "empty salt") }
        guard iterations >= 1 else { throw SASLError(.malformedRequest, text: "iteration count must be positive") }
        let prepared = try SCRAMSupport.preparePassword(password)
        return try hash.pbkdf2(password: prepared, salt: salt, iterations: iterations)
    }

    // MARK: Codable

    private enum CodingKeys: String, CodingKey {
        case hash, salt, iterations, storedKey, serverKey
    }

    /// Decodes credentials whose byte fields are base64 strings; checks that the
    /// key lengths match the hash and that salt and iteration count are usable.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        func bytes(_ key: CodingKeys) throws -> [UInt8] {
            let string = try container.decode(String.self, forKey: key)
            guard let decoded = SCRAMSupport.base64Decode(Array(string.utf8)) else {
                throw DecodingError.dataCorruptedError(forKey: key, in: container, debugDescription: "invalid base64")
            }
            return decoded
        }
        hash = try container.decode(SCRAMHash.self, forKey: .hash)
        salt = try bytes(.salt)
        iterations = try container.decode(Int.self, forKey: .iterations)
        storedKey = try bytes(.storedKey)
        serverKey = try bytes(.serverKey)
        guard !salt.isEmpty else {
            throw DecodingError.dataCorruptedError(forKey: .salt, in: container, debugDescription: "empty salt")
        }
        guard iterations >= 1 else {
            throw DecodingError.dataCorruptedError(forKey: .iterations, in: container, debugDescription: "iteration count must be positive")
        }
        guard storedKey.count == hash.byteCount, serverKey.count == hash.byteCount else {
            throw DecodingError.dataCorruptedError(forKey: .storedKey, in: container, debugDescription: "key length does not match the hash")
        }
    }

    /// Encodes the credentials with the byte fields as base64 strings, e.g.
    /// `{"hash":"sha256","iterations":4096,"salt":"…","storedKey":"…","serverKey":"…"}`.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(hash, forKey: .hash)
        try container.encode(String(decoding: SCRAMSupport.base64Encode(salt), as: UTF8.self), forKey: .salt)
        try container.encode(iterations, forKey: .iterations)
        try container.encode(String(decoding: SCRAMSupport.base64Encode(storedKey), as: UTF8.self), forKey: .storedKey)
        try container.encode(String(decoding: SCRAMSupport.base64Encode(serverKey), as: UTF8.self), forKey: .serverKey)
    }

    /// Checks a plaintext password (e.g. from SASL PLAIN) against these
    /// credentials. Runs PBKDF2 once, then compares StoredKey and ServerKey in
    /// constant time. Returns false for passwords that cannot be prepared.
    public func verify(password: String) -> Bool {
        guard let salted = try? SCRAMCredentials.saltedPassword(password: password, salt: salt, iterations: iterations, hash: hash) else {
            return false
        }
        let candidate = SCRAMCredentials.derive(saltedPassword: salted, salt: salt, iterations: iterations, hash: hash)
        let storedMatches = SCRAMSupport.constantTimeEqual(candidate.storedKey, storedKey)
        let serverMatches = SCRAMSupport.constantTimeEqual(candidate.serverKey, serverKey)
        return storedMatches && serverMatches
    }
}
