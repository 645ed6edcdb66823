import Foundation
import NIOConcurrencyHelpers
import XMPPCore

/// Archive positions (microseconds since 1970, bumped to stay strictly increasing: they order
/// the archive and the audit record, and make the journal's inserts idempotent) and the ids
/// clients see.
public final class ArchiveIDGenerator: Sendable {
    /// An archive id (XEP-0359 stanza-id, MAM result id): 22 characters of base 62, the time in
    /// microseconds (11 characters, in an alphabet sorted like ASCII so the ids sort by time)
    /// then 64 random bits (11 characters). The time prefix makes new ids land at the end of
    /// the archive's id index (one page written per batch, not one per message); the random
    /// half keeps them unguessable. Older, fully random ids remain valid.
    public static func uid() -> String {
        var time = UInt64(max(0, Date().timeIntervalSince1970 * 1_000_000))
        var random = RandomBytes.next()
        // Written in place: one allocation (the string's), not an array then a string.
        return String(unsafeUninitializedCapacity: 22) { characters in
            for index in stride(from: 10, through: 0, by: -1) {
                characters[index] = alphabet[Int(time % 62)]
                time /= 62
            }
            for index in 11..<22 {
                characters[index] = alphabet[Int(random % 62)]
                random /= 62
            }
            return 22
        }
    }

    private static let alphabet = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)

    private let last = NIOLockedValueBox<Int64>(0)

    /// One generator per process: archive positions are the table's primary key, so every
    /// writer (user archives, room archives, the audit record) must draw from the same sequence.
    public static let shared = ArchiveIDGenerator()

    public func next() -> Int64 {
        let now = Int64(Date().timeIntervalSince1970 * 1_000_000)
        return last.withLockedValue {
            $0 = max($0 + 1, now)
            return $0
        }
    }
}
