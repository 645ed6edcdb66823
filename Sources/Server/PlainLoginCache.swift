import Crypto
import NIOConcurrencyHelpers

/// Makes repeated SASL PLAIN logins cheap. PLAIN against hashed storage needs a full PBKDF2
/// (about 0.5 ms of CPU per login); after one success the cache keeps an HMAC of the password
/// under a per-process random key, bound to the account's current stored key, so the next login
/// with the same password costs one HMAC. A password change (new stored key) invalidates it.
/// Nothing here ever leaves memory; the password itself is never kept.
final class PlainLoginCache: Sendable {
    private struct Entry {
        let storedKey: [UInt8]
        let digest: [UInt8]
    }

    private let key = SymmetricKey(size: .bits256)
    private let entries = NIOLockedValueBox<[String: Entry]>([:])
    private let capacity: Int

    init(capacity: Int = 200_000) {
        self.capacity = capacity
    }

    private func digest(_ password: String) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: Array(password.utf8), using: key))
    }

    /// True if this password was verified before for the account's current credentials.
    func matches(_ username: String, password: String, storedKey: [UInt8]) -> Bool {
        guard let entry = entries.withLockedValue({ $0[username] }), entry.storedKey == storedKey else { return false }
        let candidate = digest(password)
        // Constant-time comparison.
        var difference: UInt8 = 0
        for (a, b) in zip(candidate, entry.digest) { difference |= a ^ b }
        return difference == 0 && candidate.count == entry.digest.count
    }

    func remember(_ username: String, password: String, storedKey: [UInt8]) {
        let entry = Entry(storedKey: storedKey, digest: digest(password))
        entries.withLockedValue { entries in
            if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
            entries[username] = entry
        }
    }
}
