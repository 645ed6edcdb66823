import Foundation
import NIOConcurrencyHelpers
import Storage
import XMPPCore

/// Archive positions (microseconds since 1970, bumped to stay strictly increasing: they order
/// the archive and the audit record, and make the journal's inserts idempotent) and the ids
/// clients see.
public final class ArchiveIDGenerator: Sendable {
    /// An archive id (XEP-0359 stanza-id, MAM result id) for a copy stored at `position`
    /// (`ArchiveUID`: the position, then 64 random bits). The store keeps such an id as its
    /// random half and finds it by the position, with no index of ids.
    public static func uid(position: Int64) -> String {
        ArchiveUID(position: position, random: RandomBytes.next()).text
    }

    /// An id of the same form for what has no position (yet): the time in microseconds, then 64
    /// random bits. The time prefix makes new ids land at the end of an index of ids (one page
    /// written per batch, not one per message); the random half keeps them unguessable. Older,
    /// fully random ids remain valid.
    public static func uid() -> String {
        uid(position: Int64(max(0, Date().timeIntervalSince1970 * 1_000_000)))
    }

    private let last = NIOLockedValueBox<Int64>(0)

    /// One generator per process: archive positions are the table's primary key, so every
    /// writer (user archives, room archives, the audit record) must draw from the same sequence.
    public static let shared = ArchiveIDGenerator()

    /// Makes every later position greater than `position` (the highest one stored): positions
    /// taken from the clock alone would repeat stored ones after the clock went back across a
    /// restart, and the journal's idempotent insert would then skip the new copy as stored.
    public func advance(past position: Int64) {
        last.withLockedValue { $0 = max($0, position) }
    }

    /// A new position and the archive id made from it (a copy to be stored there).
    public func nextID() -> (position: Int64, uid: String) {
        let position = next()
        return (position, Self.uid(position: position))
    }

    public func next() -> Int64 {
        let now = Int64(Date().timeIntervalSince1970 * 1_000_000)
        return last.withLockedValue {
            $0 = max($0 + 1, now)
            return $0
        }
    }
}
