#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Storage

/// Substring search over the directory, fast enough for tens of thousands of employees.
///
/// Each searchable field is one contiguous, lower-cased UTF-8 buffer holding every user's
/// text (separated by a NUL byte), so a query is a `memmem` scan at memory speed (≈3 MB for
/// 50,000 users) instead of 50,000 string comparisons; an offset table maps hits back to
/// users. Names are indexed with their pinyin and initials, so "张伟", "zhangwei", "zw" and
/// "wei" all find 张伟.
public struct DirectorySearchIndex: Sendable {
    public enum Field: String, Sendable, CaseIterable {
        /// Display name, pinyin, initials, login name, employee number.
        case name
        /// Paths of the user's units.
        case department
        case title
        /// Phones and mobile.
        case phone
        case email
        /// All of the above.
        case any
    }

    private struct Haystack: Sendable {
        var bytes: [UInt8] = []
        /// Start offset of each user's text, ascending; index = user ordinal.
        var starts: [Int] = []
    }

    /// Usernames by ordinal, sorted by display name.
    private let usernames: [String]
    private let haystacks: [Field: Haystack]

    init(users: [DirectoryUser], memberships: [String: [Membership]], paths: [String: String]) {
        let sorted = users.sorted { ($0.displayName, $0.username) < ($1.displayName, $1.username) }
        usernames = sorted.map(\.username)
        var haystacks: [Field: Haystack] = [:]
        for field in Field.allCases { haystacks[field] = Haystack() }
        for user in sorted {
            var texts: [Field: [String]] = [:]
            texts[.name] = [user.displayName, user.username, user.employeeNumber ?? ""] + Pinyin.keys(user.displayName)
            texts[.department] = (memberships[user.username] ?? []).compactMap { paths[$0.unitID] }
                + (memberships[user.username] ?? []).compactMap(\.title)
            texts[.title] = [user.title ?? ""]
            texts[.phone] = user.phones + [user.mobile ?? ""]
            texts[.email] = user.emails
            texts[.any] = Field.allCases.filter { $0 != .any }.flatMap { texts[$0] ?? [] }
            for (field, values) in texts {
                var haystack = haystacks.removeValue(forKey: field) ?? Haystack()
                haystack.starts.append(haystack.bytes.count)
                for value in values where !value.isEmpty {
                    haystack.bytes.append(contentsOf: Self.normalize(value))
                    haystack.bytes.append(0x1F)  // unit separator: no match spans two values
                }
                haystack.bytes.append(0)
                haystacks[field] = haystack
            }
        }
        self.haystacks = haystacks
    }

    /// Lower-cases ASCII and folds full-width forms, so "ZhangWei" and "ｚｗ" match too.
    static func normalize(_ text: String) -> [UInt8] {
        var scalars = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            if (0xFF01...0xFF5E).contains(scalar.value), let ascii = Unicode.Scalar(scalar.value - 0xFEE0) {
                scalars.append(ascii)
            } else {
                scalars.append(scalar)
            }
        }
        return Array(String(scalars).lowercased().utf8)
    }

    /// Usernames matching every (field, text) criterion, in display order, at most `limit`
    /// (plus whether more matched). Empty criteria match nothing.
    public func search(_ criteria: [(Field, String)], limit: Int) -> (usernames: [String], more: Bool) {
        let criteria = criteria.map { ($0.0, Self.normalize($0.1.trimmingWhitespace())) }.filter { !$0.1.isEmpty }
        guard !criteria.isEmpty else { return ([], false) }
        var result: Set<Int>?
        for (field, needle) in criteria {
            guard let haystack = haystacks[field] else { return ([], false) }
            let matches = Self.find(needle, in: haystack)
            result = result.map { $0.intersection(matches) } ?? matches
            if result?.isEmpty == true { return ([], false) }
        }
        let ordinals = (result ?? []).sorted()
        let taken = ordinals.prefix(max(0, limit)).map { usernames[$0] }
        return (taken, ordinals.count > limit)
    }

    private static func find(_ needle: [UInt8], in haystack: Haystack) -> Set<Int> {
        var found = Set<Int>()
        haystack.bytes.withUnsafeBytes { buffer in
            guard let base = buffer.baseAddress else { return }
            needle.withUnsafeBytes { needleBuffer in
                guard let needleBase = needleBuffer.baseAddress else { return }
                var offset = 0
                while offset < buffer.count {
                    guard let position = search(needleBase, needleBuffer.count, in: base, buffer.count, from: offset) else { break }
                    let ordinal = ordinalAt(position, haystack.starts)
                    found.insert(ordinal)
                    // Skip to the next user's text: one hit per user is enough.
                    offset = ordinal + 1 < haystack.starts.count ? haystack.starts[ordinal + 1] : buffer.count
                }
            }
        }
        return found
    }

    /// First occurrence of the needle at or after `from`: `memchr` for its first byte, then `memcmp`
    /// (glibc's `memmem` is not visible to Swift without _GNU_SOURCE).
    private static func search(
        _ needle: UnsafeRawPointer, _ needleCount: Int, in base: UnsafeRawPointer, _ count: Int, from: Int
    ) -> Int? {
        guard needleCount > 0 else { return nil }
        let first = Int32(needle.load(as: UInt8.self))
        var offset = from
        while count - offset >= needleCount {
            guard let hit = memchr(base + offset, first, count - offset - needleCount + 1) else { return nil }
            let position = base.distance(to: UnsafeRawPointer(hit))
            if memcmp(hit, needle, needleCount) == 0 { return position }
            offset = position + 1
        }
        return nil
    }

    /// The user whose text contains byte `position` (binary search over start offsets).
    private static func ordinalAt(_ position: Int, _ starts: [Int]) -> Int {
        var low = 0
        var high = starts.count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if starts[middle] <= position { low = middle } else { high = middle - 1 }
        }
        return low
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first.isWhitespace { scalars.removeFirst() }
        while let last = scalars.last, last.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }
}
