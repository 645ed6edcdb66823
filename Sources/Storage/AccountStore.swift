import XMPPCore

/// The stored secret of an account: SCRAM keys for both hashes, never the password.
public struct StoredCredentials: Sendable, Hashable, Codable {
    public var sha1: SCRAMCredentials
    public var sha256: SCRAMCredentials

    public init(sha1: SCRAMCredentials, sha256: SCRAMCredentials) {
        self.sha1 = sha1
        self.sha256 = sha256
    }

    /// Derives both credential sets from a password (PBKDF2; costs milliseconds, call off the event loop).
    public static func derive(password: String, iterations: Int = 4096) throws -> StoredCredentials {
        StoredCredentials(
            sha1: try SCRAMCredentials.derive(password: password, salt: randomSalt(), iterations: iterations, hash: .sha1),
            sha256: try SCRAMCredentials.derive(password: password, salt: randomSalt(), iterations: iterations, hash: .sha256)
        )
    }

    public func credentials(for hash: SCRAMHash) -> SCRAMCredentials {
        switch hash {
        case .sha1: return sha1
        case .sha256: return sha256
        }
    }

    private static func randomSalt() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<16).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }
}

/// An account as the back office sees it.
public struct Account: Sendable, Hashable {
    public var username: String
    /// nil for an account without a local password (authenticated by the directory, e.g. LDAP bind).
    public var credentials: StoredCredentials?
    public var disabled: Bool
    public var createdAt: Double

    public init(username: String, credentials: StoredCredentials?, disabled: Bool = false, createdAt: Double) {
        self.username = username
        self.credentials = credentials
        self.disabled = disabled
        self.createdAt = createdAt
    }
}

/// Accounts of the served domain, keyed by normalised localpart.
public protocol AccountStore: Sendable {
    func account(_ username: String) async throws -> Account?
    /// Creates an account; throws `StorageError.conflict` if it exists.
    func createAccount(_ account: Account) async throws
    /// Replaces the credentials; returns false if there is no such account.
    func setCredentials(_ username: String, _ credentials: StoredCredentials) async throws -> Bool
    /// Deletes the account and everything stored for it; returns false if there was none.
    func deleteAccount(_ username: String) async throws -> Bool
    func listAccounts() async throws -> [String]
    func accountCount() async throws -> Int
}

/// Failures every store implementation reports the same way.
public struct StorageError: Error, Hashable, Sendable, CustomStringConvertible {
    private enum Kind: Hashable, Sendable { case conflict, corrupt, backend }
    private let kind: Kind
    public let message: String

    public static func conflict(_ message: String) -> StorageError { StorageError(kind: .conflict, message: message) }
    public static func corrupt(_ message: String) -> StorageError { StorageError(kind: .corrupt, message: message) }
    public static func backend(_ message: String) -> StorageError { StorageError(kind: .backend, message: message) }

    public var isConflict: Bool { kind == .conflict }
    public var description: String { message }
}
