import Crypto
import Foundation
import Storage
import XMPPCore
import _CryptoExtras

/// A problem with keys, worded for the operator.
public struct VaultError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The master key: wraps the data keys, never touches data itself. It comes from a key file
/// (32 random bytes, base64, mode 0600 — keep it off the database's disk for real protection)
/// or from a passphrase (PBKDF2-SHA256, 600,000 rounds, salt beside the database). A KMS or HSM
/// can be added as another `MasterKeySource`.
public struct MasterKey: Sendable {
    let key: SymmetricKey
    /// A fingerprint (not the key): which master wraps which data key.
    public let id: String

    public init(_ key: SymmetricKey) {
        self.key = key
        let digest = SHA256.hash(data: key.withUnsafeBytes { Data($0) } + Data("switchboard master key id".utf8))
        id = digest.prefix(8).map { String(format: "%02x", $0) }.joined()
    }

    /// Reads a key file; creates one (0600) when `create` and it does not exist.
    public static func fromFile(_ path: String, create: Bool) throws -> MasterKey {
        let manager = FileManager.default
        if !manager.fileExists(atPath: path) {
            guard create else { throw VaultError("master key file \(path) does not exist") }
            let directory = (path as NSString).deletingLastPathComponent
            try manager.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            let key = SymmetricKey(size: .bits256)
            let text = key.withUnsafeBytes { Data($0) }.base64EncodedString() + "\n"
            guard manager.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]) else {
                throw VaultError("cannot create master key file \(path)")
            }
            return MasterKey(key)
        }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw VaultError("cannot read master key file \(path): \(error.localizedDescription)")
        }
        guard let data = Data(base64Encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)), data.count == 32 else {
            throw VaultError("master key file \(path) must hold 32 bytes in base64 (as written by the server)")
        }
        return MasterKey(SymmetricKey(data: data))
    }

    /// Derives the key from a passphrase with the salt in `saltPath` (created when missing).
    public static func fromPassphrase(_ passphrase: String, saltPath: String) throws -> MasterKey {
        guard passphrase.utf8.count >= 12 else { throw VaultError("the master key passphrase must be at least 12 bytes") }
        let manager = FileManager.default
        var salt: [UInt8]
        if let data = manager.contents(atPath: saltPath), data.count == 16 {
            salt = Array(data)
        } else {
            var generator = SystemRandomNumberGenerator()
            salt = (0..<16).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
            let directory = (saltPath as NSString).deletingLastPathComponent
            try manager.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            guard manager.createFile(atPath: saltPath, contents: Data(salt), attributes: [.posixPermissions: 0o600]) else {
                throw VaultError("cannot write \(saltPath)")
            }
        }
        let key = try KDF.Insecure.PBKDF2.deriveKey(
            from: Array(passphrase.utf8), salt: salt, using: .sha256, outputByteCount: 32, unsafeUncheckedRounds: 600_000)
        return MasterKey(key)
    }
}

/// The data keys, unwrapped in memory: seals new values with the newest key, opens values
/// sealed with any of them. AES-256-GCM; the sealed format is
/// `00 'S' 'B' 01 | key id (4 bytes, big endian) | nonce (12) | ciphertext | tag (16)`, with the
/// context (which table) and the key id authenticated, so a value moved elsewhere fails to open.
public final class KeyRing: FieldCipher, Sendable {
    static let magic: [UInt8] = [0x00, 0x53, 0x42, 0x01]
    private let keys: [Int64: SymmetricKey]
    private let activeKey: SymmetricKey?
    public let activeKeyID: Int64
    public let master: MasterKey

    init(master: MasterKey, keys: [Int64: SymmetricKey], active: Int64) {
        self.master = master
        self.keys = keys
        self.activeKey = keys[active]
        self.activeKeyID = active
    }

    public var keyCount: Int { keys.count }

    /// Unwraps the stored data keys (creating the first one if there is none).
    public static func open(master: MasterKey, store: any DataKeyStore) async throws -> KeyRing {
        var stored = try await store.dataKeys()
        if stored.isEmpty {
            _ = try await store.addDataKey(try wrap(SymmetricKey(size: .bits256), with: master))
            stored = try await store.dataKeys()
        }
        var keys: [Int64: SymmetricKey] = [:]
        for key in stored {
            guard key.masterID == master.id else {
                throw VaultError(
                    "data key \(key.id) is wrapped by master key \(key.masterID), not by the configured one (\(master.id)); "
                        + "configure the right master key (security.master_key_file or the passphrase)")
            }
            keys[key.id] = try unwrap(key, with: master)
        }
        guard let active = stored.filter({ !$0.retired }).map(\.id).max() ?? stored.map(\.id).max() else {
            throw VaultError("no data key")
        }
        return KeyRing(master: master, keys: keys, active: active)
    }

    static func wrap(_ key: SymmetricKey, with master: MasterKey, createdAt: Double = Date().timeIntervalSince1970) throws -> WrappedDataKey {
        let sealed = try AES.GCM.seal(key.withUnsafeBytes { Data($0) }, using: master.key, authenticating: Data("data key".utf8))
        guard let combined = sealed.combined else { throw VaultError("cannot wrap a data key") }
        return WrappedDataKey(id: 0, wrapped: Array(combined), masterID: master.id, createdAt: createdAt)
    }

    static func unwrap(_ key: WrappedDataKey, with master: MasterKey) throws -> SymmetricKey {
        do {
            let box = try AES.GCM.SealedBox(combined: Data(key.wrapped))
            return SymmetricKey(data: try AES.GCM.open(box, using: master.key, authenticating: Data("data key".utf8)))
        } catch {
            throw VaultError("data key \(key.id) does not open with the configured master key")
        }
    }

    /// Adds a new data key for new data; the old ones keep opening old data.
    public static func rotate(master: MasterKey, store: any DataKeyStore) async throws -> Int64 {
        try await store.addDataKey(try wrap(SymmetricKey(size: .bits256), with: master))
    }

    /// Re-wraps every data key under a new master key (data is not touched).
    public static func rewrap(from old: MasterKey, to new: MasterKey, store: any DataKeyStore) async throws {
        var keys: [WrappedDataKey] = []
        for stored in try await store.dataKeys() {
            let key = try unwrap(stored, with: old)
            var rewrapped = try wrap(key, with: new, createdAt: stored.createdAt)
            rewrapped.id = stored.id
            rewrapped.retired = stored.retired
            keys.append(rewrapped)
        }
        try await store.rewrapDataKeys(keys)
    }

    // MARK: - FieldCipher

    public func isSealed(_ value: [UInt8]) -> Bool {
        value.count >= 4 + 4 + 12 + 16 && value.starts(with: Self.magic)
    }

    /// Context ‖ 0 ‖ key id: what a sealed value is bound to.
    private static func authenticated(_ context: String, _ keyID: Int64) -> [UInt8] {
        var bytes = Array(context.utf8)
        bytes.append(0)
        bytes.append(contentsOf: String(keyID).utf8)
        return bytes
    }

    public func seal(_ plaintext: [UInt8], context: String) throws -> [UInt8] {
        try plaintext.withUnsafeBytes { try seal(bytes: $0, context: context) }
    }

    /// Seals a text's UTF-8 bytes (the same value as `seal(Array(text.utf8), …)`), without
    /// copying them into an array first.
    public func seal(text: String, context: String) throws -> [UInt8] {
        if let sealed = try text.utf8.withContiguousStorageIfAvailable({ try seal(bytes: UnsafeRawBufferPointer($0), context: context) }) {
            return sealed
        }
        return try seal(Array(text.utf8), context: context)
    }

    /// magic ‖ key id (UInt32, big-endian) ‖ nonce ‖ ciphertext ‖ tag.
    private func seal(bytes: UnsafeRawBufferPointer, context: String) throws -> [UInt8] {
        guard let key = activeKey else { throw VaultError("no active data key") }
        // A fresh random nonce from the kernel for every value (one read of its generator; not
        // from a buffer in process memory, which a cloned or restored VM would hand out twice).
        var storage = (UInt64(0), UInt32(0))  // 12 bytes on the stack
        return try withUnsafeMutableBytes(of: &storage) { raw in
            let nonce = UnsafeMutableRawBufferPointer(rebasing: raw[..<12])
            RandomBytes.fresh(nonce)
            let box = try Self.withAuthenticated(context, activeKeyID) { authenticated in
                try AES.GCM.seal(bytes, using: key, nonce: AES.GCM.Nonce(data: UnsafeRawBufferPointer(nonce)), authenticating: authenticated)
            }
            // Written from the box's parts: its `combined` would be one more copy of the value.
            var out = [UInt8]()
            out.reserveCapacity(8 + 12 + bytes.count + 16)
            out.append(contentsOf: Self.magic)
            let id = UInt32(truncatingIfNeeded: activeKeyID)
            out.append(UInt8(id >> 24))
            out.append(UInt8(id >> 16 & 0xff))
            out.append(UInt8(id >> 8 & 0xff))
            out.append(UInt8(id & 0xff))
            out.append(contentsOf: UnsafeRawBufferPointer(nonce))
            box.ciphertext.withUnsafeBytes { out.append(contentsOf: $0) }
            box.tag.withUnsafeBytes { out.append(contentsOf: $0) }
            return out
        }
    }

    /// `authenticated(context, keyID)` in a stack buffer (no allocation per sealed value).
    private static func withAuthenticated<T>(_ context: String, _ keyID: Int64, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        let digits = String(keyID)
        let count = context.utf8.count + 1 + digits.utf8.count
        guard count <= 256 else { return try authenticated(context, keyID).withUnsafeBytes(body) }
        return try withUnsafeTemporaryAllocation(byteCount: count, alignment: 1) { buffer in
            var offset = 0
            for byte in context.utf8 {
                buffer[offset] = byte
                offset += 1
            }
            buffer[offset] = 0
            offset += 1
            for byte in digits.utf8 {
                buffer[offset] = byte
                offset += 1
            }
            return try body(UnsafeRawBufferPointer(buffer))
        }
    }

    public func open(_ sealed: [UInt8], context: String) throws -> [UInt8] {
        guard let id = keyID(of: sealed) else { throw VaultError("not a sealed value") }
        guard let key = keys[id] else { throw VaultError("value sealed with unknown data key \(id)") }
        do {
            let box = try AES.GCM.SealedBox(
                nonce: AES.GCM.Nonce(data: sealed[8..<20]), ciphertext: sealed[20..<(sealed.count - 16)], tag: sealed[(sealed.count - 16)...])
            return Array(try AES.GCM.open(box, using: key, authenticating: Self.authenticated(context, id)))
        } catch {
            throw VaultError("a sealed value failed authentication (tampered, or moved from elsewhere)")
        }
    }

    public func needsResealing(_ value: [UInt8]) -> Bool {
        keyID(of: value) != activeKeyID
    }

    /// The key id a sealed value uses (for re-encryption).
    public func keyID(of sealed: [UInt8]) -> Int64? {
        guard isSealed(sealed) else { return nil }
        return Int64(UInt32(sealed[4]) << 24 | UInt32(sealed[5]) << 16 | UInt32(sealed[6]) << 8 | UInt32(sealed[7]))
    }
}
