import Foundation

/// Random bits from the kernel, 4 KiB per system call.
///
/// For values drawn per message (archive ids) a `getrandom` call each would be a system call
/// per value on a hot thread. These come from `/dev/urandom` (the same source, never blocking
/// once the kernel's pool is seeded, long before a server starts), read ahead into a buffer
/// that is used once and then refilled. Not for keys or nonces: a VM cloned or restored from a
/// snapshot would hand out the buffered bits twice (those come from the kernel at each use).
public enum RandomBytes {
    private final class Pool: @unchecked Sendable {
        // @unchecked: `buffer` and `used` are guarded by `lock`.
        let lock = NSLock()
        var buffer = [UInt64](repeating: 0, count: 512)
        var used = 512
        /// Kept open for the life of the process.
        let urandom = open("/dev/urandom", O_RDONLY | O_CLOEXEC)

        /// Called with the lock held.
        func refill() {
            let filled = buffer.withUnsafeMutableBytes { bytes in
                urandom >= 0 && read(urandom, bytes.baseAddress, bytes.count) == bytes.count
            }
            if !filled {
                // Not expected (no /dev/urandom in a sandbox): the system generator instead.
                var generator = SystemRandomNumberGenerator()
                for index in buffer.indices { buffer[index] = generator.next() }
            }
            used = 0
        }
    }

    private static let pool = Pool()

    /// Fills `buffer` from the kernel now, in one system call (nothing buffered: for nonces).
    /// `SystemRandomNumberGenerator` makes a `getrandom` call per 8 bytes, two for a 12-byte
    /// AES-GCM nonce; this is one `read` of the kernel's generator for any length up to 256 bytes.
    public static func fresh(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        if buffer.count <= 256, pool.urandom >= 0, read(pool.urandom, base, buffer.count) == buffer.count { return }
        var generator = SystemRandomNumberGenerator()
        for index in 0..<buffer.count { buffer[index] = UInt8(truncatingIfNeeded: generator.next()) }
    }

    /// 64 random bits.
    public static func next() -> UInt64 {
        pool.lock.lock()
        defer { pool.lock.unlock() }
        if pool.used == pool.buffer.count { pool.refill() }
        defer { pool.used += 1 }
        return pool.buffer[pool.used]
    }
}
