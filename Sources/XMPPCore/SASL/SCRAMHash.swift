import Crypto
import Foundation
import _CryptoExtras

/// The hash function underlying a SCRAM mechanism (RFC 5802, RFC 7677).
public enum SCRAMHash: String, Hashable, Sendable, CaseIterable, Codable {
    /// SHA-1, for the "SCRAM-SHA-1" mechanism.
    case sha1
    /// SHA-256, for the "SCRAM-SHA-256" mechanism.
    case sha256

    /// The SASL mechanism name, "SCRAM-SHA-1" or "SCRAM-SHA-256".
    public var mechanismName: String {
        switch self {
        case .sha1: return "SCRAM-SHA-1"
        case .sha256: return "SCRAM-SHA-256"
        }
    }

    /// Looks a hash up by its SASL mechanism name (exact, upper-case match).
    /// Returns nil for unknown names, including the "-PLUS" variants.
    public init?(mechanismName: String) {
        switch mechanismName {
        case "SCRAM-SHA-1": self = .sha1
        case "SCRAM-SHA-256": self = .sha256
        default: return nil
        }
    }

    /// The digest length in bytes (20 for SHA-1, 32 for SHA-256); also the
    /// length of SaltedPassword, StoredKey, ServerKey and ClientProof.
    public var byteCount: Int {
        switch self {
        case .sha1: return Insecure.SHA1.byteCount
        case .sha256: return SHA256.byteCount
        }
    }

    // MARK: Primitives (internal)

    /// HMAC(key, data).
    func hmac<D: DataProtocol>(key: [UInt8], data: D) -> [UInt8] {
        let symmetricKey = SymmetricKey(data: key)
        switch self {
        case .sha1: return Array(HMAC<Insecure.SHA1>.authenticationCode(for: data, using: symmetricKey))
        case .sha256: return Array(HMAC<SHA256>.authenticationCode(for: data, using: symmetricKey))
        }
    }

    /// H(data).
    func digest<D: DataProtocol>(_ data: D) -> [UInt8] {
        switch self {
        case .sha1: return Array(Insecure.SHA1.hash(data: data))
        case .sha256: return Array(SHA256.hash(data: data))
        }
    }

    /// Hi(password, salt, i): PBKDF2 with HMAC-H, via BoringSSL.
    func pbkdf2(password: [UInt8], salt: [UInt8], iterations: Int) throws(SASLError) -> [UInt8] {
        let function: KDF.Insecure.PBKDF2.HashFunction = self == .sha1 ? .insecureSHA1 : .sha256
        do {
            let key = try KDF.Insecure.PBKDF2.deriveKey(
                from: password, salt: salt, using: function,
                outputByteCount: byteCount, unsafeUncheckedRounds: iterations
            )
            return key.withUnsafeBytes { Array($0) }
        } catch {
            throw SASLError(.temporaryAuthFailure, text: "key derivation failed")
        }
    }
}

// MARK: - Shared helpers

enum SCRAMSupport {
    static let clientKeyLabel = Array("Client Key".utf8)
    static let serverKeyLabel = Array("Server Key".utf8)

    /// The default iteration count for newly derived credentials.
    static let defaultIterations = 4096

    /// Compares two byte strings in time that depends only on their lengths.
    static func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for index in lhs.indices {
            difference |= lhs[index] ^ rhs[index]
        }
        return difference == 0
    }

    static func xor(_ lhs: [UInt8], _ rhs: [UInt8]) -> [UInt8] {
        var result = lhs
        for index in result.indices where index < rhs.count {
            result[index] ^= rhs[index]
        }
        return result
    }

    static func base64Encode(_ bytes: [UInt8]) -> [UInt8] {
        Array(Data(bytes).base64EncodedData())
    }

    /// Strict RFC 4648 base64: only the canonical encoding of the result is accepted (Foundation
    /// alone tolerates extra `=` padding, so one proof would have many spellings; found by
    /// SASLAndJIDFuzzTests).
    static func base64Decode<C: Collection>(_ bytes: C) -> [UInt8]? where C.Element == UInt8 {
        guard let data = Data(base64Encoded: Data(bytes)) else { return nil }
        let decoded = Array(data)
        guard base64Encode(decoded).elementsEqual(bytes) else { return nil }
        return decoded
    }

    /// Decodes strict UTF-8 (no replacement characters, no NUL).
    static func utf8String<C: Collection>(_ bytes: C) -> String? where C.Element == UInt8 {
        guard !bytes.contains(0) else { return nil }
        let string = String(decoding: bytes, as: UTF8.self)
        guard string.utf8.elementsEqual(bytes) else { return nil }
        return string
    }

    /// Prepares a password with the OpaqueString profile (RFC 8265 §4.2), as
    /// RFC 6120 §6.3.8 requires in place of SASLprep.
    static func preparePassword(_ password: String) throws(SASLError) -> [UInt8] {
        if password.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) {
            guard !password.isEmpty else { throw SASLError(.malformedRequest, text: "empty password") }
            return Array(password.utf8)
        }
        do throws(PRECIS.Failure) {
            return Array(try PRECIS.opaqueString(password, maximumLength: nil).utf8)
        } catch {
            throw SASLError(.malformedRequest, text: "password contains characters that are not allowed")
        }
    }

    /// saslname encoding: "," becomes "=2C" and "=" becomes "=3D".
    static func encodeSASLName(_ name: String) -> [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(name.utf8.count)
        for byte in name.utf8 {
            switch byte {
            case UInt8(ascii: ","): result.append(contentsOf: "=2C".utf8)
            case UInt8(ascii: "="): result.append(contentsOf: "=3D".utf8)
            default: result.append(byte)
            }
        }
        return result
    }

    /// Decodes a saslname; nil if it contains a bare "=" or invalid UTF-8.
    static func decodeSASLName(_ bytes: ArraySlice<UInt8>) -> String? {
        var result: [UInt8] = []
        result.reserveCapacity(bytes.count)
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let byte = bytes[index]
            if byte == UInt8(ascii: "=") {
                guard bytes.endIndex - index >= 3 else { return nil }
                let first = bytes[index + 1]
                let second = bytes[index + 2]
                if first == UInt8(ascii: "2") && second == UInt8(ascii: "C") {
                    result.append(UInt8(ascii: ","))
                } else if first == UInt8(ascii: "3") && second == UInt8(ascii: "D") {
                    result.append(UInt8(ascii: "="))
                } else {
                    return nil
                }
                index += 3
            } else {
                result.append(byte)
                index += 1
            }
        }
        return utf8String(result)
    }

    /// Whether every byte is a SCRAM "printable" character (%x21-2B / %x2D-7E).
    static func isPrintable<C: Collection>(_ bytes: C) -> Bool where C.Element == UInt8 {
        bytes.allSatisfy { $0 >= 0x21 && $0 <= 0x7E && $0 != UInt8(ascii: ",") }
    }

    /// Splits "a=value" into the attribute letter and the value; nil if malformed.
    static func attribute(_ field: ArraySlice<UInt8>) -> (name: UInt8, value: ArraySlice<UInt8>)? {
        guard field.count >= 2, field[field.startIndex + 1] == UInt8(ascii: "=") else { return nil }
        let name = field[field.startIndex]
        guard (name >= UInt8(ascii: "a") && name <= UInt8(ascii: "z")) || (name >= UInt8(ascii: "A") && name <= UInt8(ascii: "Z")) else {
            return nil
        }
        return (name, field[(field.startIndex + 2)...])
    }

    /// Random printable nonce: 18 random bytes, base64-encoded (24 characters).
    static func randomNonce() -> String {
        var generator = SystemRandomNumberGenerator()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(24)
        for _ in 0..<3 {
            withUnsafeBytes(of: generator.next() as UInt64) { bytes.append(contentsOf: $0) }
        }
        return Data(bytes.prefix(18)).base64EncodedString()
    }

    static func randomBytes(count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count + 8)
        while bytes.count < count {
            withUnsafeBytes(of: generator.next() as UInt64) { bytes.append(contentsOf: $0) }
        }
        return Array(bytes.prefix(count))
    }
}
