import Foundation
import NIOConcurrencyHelpers

/// Locks out password guessers per account and per source address, with exponential back-off,
/// while letting the real user back in soon after a few typos.
///
/// After `maxFailures` failed logins for one account (ten times that for one address, which may
/// be a NAT gateway for a whole office) within `window` seconds, the key is locked for
/// `lockout` seconds; every further lockout of the same key doubles that, up to `maxLockout`.
/// While locked, attempts are refused (`temporary-auth-failure` with a retry hint) before any
/// password is checked, so a locked account cannot be guessed at all. A key's history is
/// forgotten once it has had no failure for `max(window, maxLockout)` seconds; a successful
/// login clears its account's history (not the address's).
///
/// ```
/// failures:  x x x x x |---- 60 s ----| x x x x x |-------- 120 s --------| x ... (≤ max)
///                      locked (level 1)           locked (level 2)
/// ```
final class LoginThrottle: Sendable {
    private struct Entry {
        /// Times of failures since the last lockout, within the window.
        var failures: [Double] = []
        /// Lockouts so far; the next one lasts `lockout × 2^level`.
        var level = 0
        var lockedUntil: Double = 0
        var lastFailure: Double = 0
    }

    private let maxFailures: Int
    private let window: Double
    private let lockout: Double
    private let maxLockout: Double
    private let clock: @Sendable () -> Double
    private let table = NIOLockedValueBox<[String: Entry]>([:])

    /// - Parameter clock: seconds on any monotonic-enough scale (tests pass their own).
    init(
        maxFailures: Int, window: Double, lockout: Double = 60, maxLockout: Double = 3600,
        clock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }
    ) {
        self.maxFailures = maxFailures
        self.window = window
        self.lockout = lockout
        self.maxLockout = max(lockout, maxLockout)
        self.clock = clock
    }

    /// Seconds until the account and address may try again, or nil if they may try now.
    func retryAfter(account: String?, address: String?) -> Double? {
        let now = clock()
        return table.withLockedValue { table in
            var wait: Double?
            for key in Self.keys(account: account, address: address) {
                guard let entry = table[key] else { continue }
                if entry.lockedUntil > now { wait = max(wait ?? 0, entry.lockedUntil - now) }
            }
            return wait
        }
    }

    /// Records a failed login; returns how many keys (account, address) it newly locked.
    @discardableResult
    func recordFailure(account: String?, address: String?) -> Int {
        let now = clock()
        let forgetAfter = max(window, maxLockout)
        return table.withLockedValue { table in
            var locked = 0
            for key in Self.keys(account: account, address: address) {
                var entry = table[key] ?? Entry()
                if now - entry.lastFailure > forgetAfter, entry.lockedUntil <= now { entry = Entry() }
                entry.lastFailure = now
                entry.failures.removeAll { now - $0 > window }
                entry.failures.append(now)
                if entry.failures.count >= limit(key), entry.lockedUntil <= now {
                    let seconds = min(maxLockout, lockout * pow(2, Double(min(entry.level, 30))))
                    entry.lockedUntil = now + seconds
                    entry.level += 1
                    entry.failures = []
                    locked += 1
                }
                table[key] = entry
            }
            // Bound the table: forget quiet keys if an attacker sprays many names or addresses.
            if table.count > 100_000 {
                table = table.filter { $0.value.lockedUntil > now || now - $0.value.lastFailure < window }
            }
            return locked
        }
    }

    private func limit(_ key: String) -> Int {
        key.hasPrefix("addr:") ? maxFailures * 10 : maxFailures
    }

    func recordSuccess(account: String?) {
        guard let account else { return }
        _ = table.withLockedValue { $0.removeValue(forKey: "user:" + account) }
    }

    private static func keys(account: String?, address: String?) -> [String] {
        var keys: [String] = []
        if let account { keys.append("user:" + account) }
        if let address { keys.append("addr:" + address) }
        return keys
    }
}
