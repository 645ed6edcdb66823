/// A token bucket: `rate` tokens per second, at most `burst` in hand, one token per event.
///
/// Exact: the monotonic clock is read on every `take` (a vDSO call, tens of nanoseconds, next
/// to microseconds for the stanza itself). Reading it only when the bucket looked empty was
/// tried and let a client that paused send up to twice `burst` at once (LimitsTests caught it).
struct TokenBucket: Sendable {
    let rate: Double
    let burst: Double
    private(set) var tokens: Double
    private var last: UInt64

    /// - Parameter now: nanoseconds on a monotonic clock.
    init(rate: Double, burst: Double, now: UInt64) {
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now
    }

    /// Takes one token. Returns nil if there was one; otherwise the nanoseconds until `wanted`
    /// tokens will be in hand (nothing is taken).
    mutating func take(wanted: Double = 1, now: () -> UInt64) -> UInt64? {
        refill(now())
        if tokens >= 1 {
            tokens -= 1
            return nil
        }
        let missing = min(max(wanted, 1), burst) - tokens
        return UInt64((missing / rate * 1e9).rounded(.up))
    }

    private mutating func refill(_ now: UInt64) {
        guard now > last else { return }
        tokens = min(burst, tokens + Double(now - last) / 1e9 * rate)
        last = now
    }

    /// Whether the bucket is full at `now` (an idle key can be forgotten).
    mutating func isFull(now: UInt64) -> Bool {
        refill(now)
        return tokens >= burst
    }
}
