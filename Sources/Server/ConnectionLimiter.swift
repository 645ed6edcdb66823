import NIOConcurrencyHelpers
import NIOCore

/// Per source address: concurrent client connections and new connections per second, checked
/// when a connection is accepted, before any TLS or XMPP work (docs/security.md).
///
/// IPv4 addresses (and IPv4-mapped IPv6) count one by one; IPv6 addresses count per /64, the
/// block one subscriber usually gets. The HTTP listener is not limited here: it normally sits
/// behind a reverse proxy, whose one address every WebSocket client would share.
final class ConnectionLimiter: Sendable {
    /// What connections are counted by.
    enum AddressKey: Hashable, Sendable {
        case v4(UInt32)
        case v6Prefix(UInt64)
    }

    enum Refusal: Error, Sendable {
        case tooManyOpen
        case tooFast
    }

    private struct Entry {
        var open = 0
        var bucket: TokenBucket?
    }

    private let maxOpen: Int
    private let rate: Double
    private let burst: Double
    private let clock: @Sendable () -> UInt64
    private let table = NIOLockedValueBox<[AddressKey: Entry]>([:])
    private let exempt: [AddressRange]

    init(
        maxOpen: Int, ratePerSecond: Int, burst: Int, exempt: [AddressRange] = [],
        clock: @escaping @Sendable () -> UInt64 = { UInt64(NIODeadline.now().uptimeNanoseconds) }
    ) {
        self.exempt = exempt
        self.maxOpen = maxOpen
        self.rate = Double(ratePerSecond)
        self.burst = Double(max(burst, 1))
        self.clock = clock
    }

    var enabled: Bool { maxOpen > 0 || rate > 0 }

    /// Whether the per-address limits skip this peer (`limits.exempt_addresses`).
    func isExempt(_ address: SocketAddress?) -> Bool {
        !exempt.isEmpty && exempt.contains { $0.contains(address) }
    }

    /// Counts a new connection from `key`, or refuses it. Every admitted connection must be
    /// `release`d when it closes.
    func admit(_ key: AddressKey) -> Refusal? {
        let now = clock()
        return table.withLockedValue { table -> Refusal? in
            var entry = table[key] ?? Entry()
            if maxOpen > 0, entry.open >= maxOpen { return .tooManyOpen }
            if rate > 0 {
                var bucket = entry.bucket ?? TokenBucket(rate: rate, burst: burst, now: now)
                let refused = bucket.take(now: { now }) != nil
                entry.bucket = bucket
                if refused {
                    table[key] = entry
                    return .tooFast
                }
            }
            entry.open += 1
            table[key] = entry
            if table.count > 100_000 { Self.sweep(&table, now: now) }
            return nil
        }
    }

    func release(_ key: AddressKey) {
        let now = clock()
        table.withLockedValue { table in
            guard var entry = table[key] else { return }
            entry.open -= 1
            if entry.open <= 0, entry.bucket?.isFull(now: now) ?? true {
                table[key] = nil
            } else {
                table[key] = entry
            }
        }
    }

    /// Addresses currently tracked (tests).
    var trackedAddresses: Int { table.withLockedValue { $0.count } }

    /// Forgets addresses with nothing open whose bucket has refilled.
    private static func sweep(_ table: inout [AddressKey: Entry], now: UInt64) {
        table = table.filter { _, entry in
            var entry = entry
            return entry.open > 0 || !(entry.bucket?.isFull(now: now) ?? true)
        }
    }

    /// The key a remote address is counted under; nil for addresses that are not IP (Unix sockets).
    static func key(_ address: SocketAddress?) -> AddressKey? {
        switch address {
        case .v4(let address):
            return .v4(UInt32(bigEndian: address.address.sin_addr.s_addr))
        case .v6(let address):
            var bytes = [UInt8](repeating: 0, count: 16)
            withUnsafeBytes(of: address.address.sin6_addr) { raw in
                for i in 0..<16 { bytes[i] = raw[i] }
            }
            // ::ffff:a.b.c.d is an IPv4 client on a dual-stack socket.
            if bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF {
                return .v4(bytes[12...15].reduce(0) { $0 << 8 | UInt32($1) })
            }
            return .v6Prefix(bytes[0..<8].reduce(0) { $0 << 8 | UInt64($1) })
        default:
            return nil
        }
    }
}

/// An IPv4 or IPv6 address range in CIDR notation (`192.0.2.0/24`, `2001:db8::/32`, or one
/// address), for `limits.exempt_addresses`. IPv4-mapped IPv6 peers match IPv4 ranges.
public struct AddressRange: Sendable, Hashable {
    private let bytes: [UInt8]
    private let prefix: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = try? SocketAddress(ipAddress: String(parts[0]), port: 0),
            let bytes = Self.bytes(address)
        else { return nil }
        let maximum = bytes.count * 8
        if parts.count == 2 {
            guard let prefix = Int(parts[1]), (0...maximum).contains(prefix) else { return nil }
            self.prefix = prefix
        } else {
            self.prefix = maximum
        }
        self.bytes = bytes
    }

    /// Whether `address` lies in the range.
    public func contains(_ address: SocketAddress?) -> Bool {
        guard let address, let other = Self.bytes(address), other.count == bytes.count else { return false }
        var remaining = prefix
        for index in 0..<bytes.count where remaining > 0 {
            let bits = min(8, remaining)
            let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
            if bytes[index] & mask != other[index] & mask { return false }
            remaining -= bits
        }
        return true
    }

    /// 4 bytes for IPv4 (and IPv4-mapped IPv6), 16 for IPv6.
    private static func bytes(_ address: SocketAddress) -> [UInt8]? {
        switch address {
        case .v4(let address):
            return withUnsafeBytes(of: address.address.sin_addr) { Array($0) }
        case .v6(let address):
            let bytes = withUnsafeBytes(of: address.address.sin6_addr) { Array($0) }
            if bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF { return Array(bytes[12...]) }
            return bytes
        default:
            return nil
        }
    }
}
