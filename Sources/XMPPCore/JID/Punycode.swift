/// Internal Punycode (RFC 3492) codec, used to turn IDNA A-labels
/// ("xn--...") into U-labels and to check the encoded length of U-labels.
enum Punycode {
    private static let base = 36
    private static let tMin = 1
    private static let tMax = 26
    private static let skew = 38
    private static let damp = 700
    private static let initialBias = 72
    private static let initialN = 0x80
    /// Large enough for any label; guards the arithmetic against overflow.
    private static let limit = 1 << 40

    /// Decodes the part of an A-label after "xn--". Returns nil if it is not valid Punycode.
    static func decode<C: Collection>(_ input: C) -> [Unicode.Scalar]? where C.Element == UInt8 {
        let bytes = Array(input)
        var output: [UInt32] = []
        var position = 0
        if let delimiter = bytes.lastIndex(of: UInt8(ascii: "-")) {
            for byte in bytes[..<delimiter] {
                guard byte < 0x80 else { return nil }
                output.append(UInt32(byte))
            }
            position = delimiter + 1
        }
        var n = initialN
        var i = 0
        var bias = initialBias
        while position < bytes.count {
            let oldI = i
            var w = 1
            var k = base
            while true {
                guard position < bytes.count, let digit = digitValue(bytes[position]) else { return nil }
                position += 1
                i += digit * w
                guard i < limit else { return nil }
                let t = k <= bias ? tMin : (k >= bias + tMax ? tMax : k - bias)
                if digit < t { break }
                w *= base - t
                guard w < limit else { return nil }
                k += base
            }
            let count = output.count + 1
            bias = adapt(delta: i - oldI, count: count, firstTime: oldI == 0)
            n += i / count
            guard n < limit else { return nil }
            i %= count
            guard n <= 0x10FFFF, Unicode.Scalar(UInt32(n)) != nil else { return nil }
            output.insert(UInt32(n), at: i)
            i += 1
        }
        var scalars: [Unicode.Scalar] = []
        scalars.reserveCapacity(output.count)
        for value in output {
            guard let scalar = Unicode.Scalar(value) else { return nil }
            scalars.append(scalar)
        }
        return scalars
    }

    /// Encodes scalars as Punycode (without the "xn--" prefix).
    static func encode(_ scalars: [Unicode.Scalar]) -> [UInt8]? {
        var output: [UInt8] = []
        let values = scalars.map { Int($0.value) }
        for value in values where value < 0x80 {
            output.append(UInt8(truncatingIfNeeded: value))
        }
        let basicCount = output.count
        var handled = basicCount
        if basicCount > 0 { output.append(UInt8(ascii: "-")) }
        var n = initialN
        var delta = 0
        var bias = initialBias
        while handled < values.count {
            var m = Int.max
            for value in values where value >= n && value < m { m = value }
            delta += (m - n) * (handled + 1)
            guard delta < limit else { return nil }
            n = m
            for value in values {
                if value < n {
                    delta += 1
                    guard delta < limit else { return nil }
                }
                if value == n {
                    var q = delta
                    var k = base
                    while true {
                        let t = k <= bias ? tMin : (k >= bias + tMax ? tMax : k - bias)
                        if q < t { break }
                        output.append(digitCharacter(t + (q - t) % (base - t)))
                        q = (q - t) / (base - t)
                        k += base
                    }
                    output.append(digitCharacter(q))
                    bias = adapt(delta: delta, count: handled + 1, firstTime: handled == basicCount)
                    delta = 0
                    handled += 1
                }
            }
            delta += 1
            n += 1
        }
        return output
    }

    private static func adapt(delta: Int, count: Int, firstTime: Bool) -> Int {
        var delta = firstTime ? delta / damp : delta / 2
        delta += delta / count
        var k = 0
        while delta > ((base - tMin) * tMax) / 2 {
            delta /= base - tMin
            k += base
        }
        return k + (base - tMin + 1) * delta / (delta + skew)
    }

    private static func digitValue(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return Int(byte - UInt8(ascii: "a"))
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return Int(byte - UInt8(ascii: "A"))
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return Int(byte - UInt8(ascii: "0")) + 26
        default: return nil
        }
    }

    private static func digitCharacter(_ digit: Int) -> UInt8 {
        digit < 26 ? UInt8(truncatingIfNeeded: digit) + UInt8(ascii: "a") : UInt8(truncatingIfNeeded: digit - 26) + UInt8(ascii: "0")
    }
}
