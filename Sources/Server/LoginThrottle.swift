import Foundation
import NIOConcurrencyHelpers

/// Counts failed logins per account and per source address in a sliding window, so that a
/// password guesser is slowed down without locking the real user out for long.
///
/// After `maxFailures` failures for one account (ten times that for one address, which may be
/// a NAT gateway for a whole office) within `window` seconds, further attempts for that key
/// are refused (`temporary-auth-failure`) until the oldest failure leaves the window.
final class LoginThrottle: Sendable {
    private let maxFailures: Int
    private let window: Double
    private let failures = NIOLockedValueBox<[String: [Double]]>([:])

    init(maxFailures: Int, window: Double) {
        self.maxFailures = maxFailures
        self.window = window
    }

    private static func now() -> Double { Date().timeIntervalSince1970 }

    /// Seconds until a key may try again, or nil if it may try now.
    func retryAfter(account: String?, address: String?) -> Double? {
        let now = Self.now()
        return failures.withLockedValue { table in
            var wait: Double?
            for key in Self.keys(account: account, address: address) {
                guard var times = table[key] else { continue }
                times.removeAll { now - $0 > window }
                table[key] = times.isEmpty ? nil : times
                if times.count >= limit(key), let oldest = times.first {
                    wait = max(wait ?? 0, window - (now - oldest))
                }
            }
            return wait
        }
    }

    func recordFailure(account: String?, address: String?) {
        let now = Self.now()
        failures.withLockedValue { table in
            for key in Self.keys(account: account, address: address) {
                var times = table[key, default: []]
                times.removeAll { now - $0 > window }
                times.append(now)
                if times.count > limit(key) { times.removeFirst(times.count - limit(key)) }
                table[key] = times
            }
            // Bound the table: forget the oldest entries if an attacker sprays many keys.
            if table.count > 100_000 {
                table = table.filter { now - ($0.value.last ?? 0) < window }
            }
        }
    }

    private func limit(_ key: String) -> Int {
        key.hasPrefix("addr:") ? maxFailures * 10 : maxFailures
    }

    func recordSuccess(account: String?) {
        guard let account else { return }
        _ = failures.withLockedValue { $0.removeValue(forKey: "user:" + account) }
    }

    private static func keys(account: String?, address: String?) -> [String] {
        var keys: [String] = []
        if let account { keys.append("user:" + account) }
        if let address { keys.append("addr:" + address) }
        return keys
    }
}
