import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Splits an incoming XMPP byte stream into top-level elements without building a tree.
///
/// Why not feed everything to `XMLStreamParser`: the generator's hot path is receiving
/// `<message/>` stanzas, and building an `XMLElement` (strings, arrays) for each costs more
/// than the rest of the round trip. The framer only tracks tag nesting — start tags
/// (quote-aware, so `>` inside attribute values is fine), end tags, self-closing tags,
/// and skips `<?…?>`, `<!--…-->` and `<![CDATA[…]]>` — and hands out each complete
/// top-level element as a zero-copy slice. The connection then either scans a message
/// slice cheaply (`FastScan`) or feeds the slice to the real expat parser, which checks
/// well-formedness of everything that is not on the message hot path.
///
/// Modes: `.stream` (RFC 6120 TCP: one `<stream:stream>` root, elements at depth 1) and
/// `.framed` (RFC 7395 WebSocket: a sequence of standalone elements at depth 0).
struct StanzaFramer {
    enum Mode {
        case stream
        case framed
    }

    enum Event {
        /// The stream root's start tag (`.stream` mode only), as raw bytes.
        case streamOpened(ByteBuffer)
        /// One complete top-level element, as raw bytes.
        case element(ByteBuffer)
        /// The stream root was closed (`</stream:stream>`).
        case streamClosed
    }

    struct FramingError: Error, CustomStringConvertible {
        var description: String
    }

    /// Largest element (or run of unterminated bytes) we are willing to buffer.
    static let maxBuffered = 4 * 1024 * 1024

    private let mode: Mode
    private var buffer = ByteBuffer()
    /// Scan position, relative to `buffer.readerIndex`.
    private var position = 0
    /// Start of the current top-level element, relative to `buffer.readerIndex`.
    private var elementStart: Int?
    private var depth = 0
    private var rootOpen = false

    init(mode: Mode) {
        self.mode = mode
    }

    /// Forgets all state: a stream restart (after STARTTLS or SASL success).
    mutating func reset() {
        buffer.clear()
        position = 0
        elementStart = nil
        depth = 0
        rootOpen = false
    }

    mutating func append(_ incoming: inout ByteBuffer) {
        if buffer.readableBytes == 0 {
            // Common case: nothing left over, take the read buffer as is (no copy).
            buffer = incoming
            position = 0
        } else {
            if buffer.readerIndex > 65_536 { buffer.discardReadBytes() }
            buffer.writeBuffer(&incoming)
        }
    }

    private var baseDepth: Int { mode == .stream ? 1 : 0 }

    /// The next complete event, or nil when more bytes are needed.
    mutating func next() throws(FramingError) -> Event? {
        let readable = buffer.readableBytes
        if readable - position <= 0 { return nil }
        if readable > Self.maxBuffered {
            throw FramingError(description: "element larger than \(Self.maxBuffered) bytes")
        }
        let outcome: Outcome = buffer.withUnsafeReadableBytes { bytes in
            scan(bytes)
        }
        switch outcome {
        case .needMore:
            return nil
        case .failed(let message):
            throw FramingError(description: message)
        case .rootOpened(let start, let end):
            let slice = buffer.getSlice(at: buffer.readerIndex + start, length: end - start) ?? ByteBuffer()
            consume(upTo: end)
            return .streamOpened(slice)
        case .element(let start, let end):
            let slice = buffer.getSlice(at: buffer.readerIndex + start, length: end - start) ?? ByteBuffer()
            consume(upTo: end)
            return .element(slice)
        case .rootClosed(let end):
            consume(upTo: end)
            return .streamClosed
        }
    }

    private mutating func consume(upTo end: Int) {
        buffer.moveReaderIndex(forwardBy: end)
        position = 0
        elementStart = nil
    }

    private enum Outcome {
        case needMore
        case failed(String)
        case rootOpened(Int, Int)
        case element(Int, Int)
        case rootClosed(Int)
    }

    private static let lt = UInt8(ascii: "<")
    private static let gt = UInt8(ascii: ">")

    private mutating func scan(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        let count = bytes.count
        var index = position
        while index < count {
            // Find the next '<'. Text (inside elements, or whitespace between them) is skipped.
            guard let lt = Self.find(Self.lt, in: bytes, from: index) else {
                index = count
                break
            }
            if lt + 1 >= count {
                index = lt
                break
            }
            let second = bytes[lt + 1]
            if second == UInt8(ascii: "?") {
                guard let end = Self.find2(UInt8(ascii: "?"), Self.gt, in: bytes, from: lt + 2) else { index = lt; break }
                index = end
                continue
            }
            if second == UInt8(ascii: "!") {
                if Self.hasPrefix(bytes, at: lt, "<!--") {
                    guard let end = Self.findSequence([0x2D, 0x2D, 0x3E], in: bytes, from: lt + 4) else { index = lt; break }
                    index = end
                    continue
                }
                if Self.hasPrefix(bytes, at: lt, "<![CDATA[") {
                    guard let end = Self.findSequence([0x5D, 0x5D, 0x3E], in: bytes, from: lt + 9) else { index = lt; break }
                    index = end
                    continue
                }
                if count - lt < 9 {
                    index = lt
                    break
                }
                position = lt
                return .failed("markup declaration in the stream")
            }
            if second == UInt8(ascii: "/") {
                guard let gt = Self.find(Self.gt, in: bytes, from: lt + 2) else { index = lt; break }
                depth -= 1
                index = gt + 1
                if mode == .stream && depth == 0 {
                    position = index
                    return .rootClosed(index)
                }
                if depth < baseDepth {
                    position = index
                    return .failed("unbalanced end tag")
                }
                if depth == baseDepth, let start = elementStart {
                    position = index
                    return .element(start, index)
                }
                continue
            }
            // A start tag: find its '>' outside quoted attribute values.
            guard let gt = Self.findTagEnd(bytes, from: lt + 1) else { index = lt; break }
            let selfClosing = bytes[gt - 1] == UInt8(ascii: "/")
            index = gt + 1
            if mode == .stream && !rootOpen {
                rootOpen = true
                depth = 1
                position = index
                return .rootOpened(lt, index)
            }
            if depth == baseDepth {
                elementStart = lt
                if selfClosing {
                    position = index
                    return .element(lt, index)
                }
            }
            if !selfClosing { depth += 1 }
        }
        position = index
        if elementStart == nil && depth <= baseDepth {
            // Only inter-element whitespace (keep-alives) or an incomplete tag remains.
            // Drop what has been scanned so the buffer does not grow.
            let drop = index
            if drop > 0 {
                buffer.moveReaderIndex(forwardBy: drop)
                position = 0
            }
        }
        return .needMore
    }

    private static func find(_ byte: UInt8, in bytes: UnsafeRawBufferPointer, from: Int) -> Int? {
        guard from < bytes.count, let base = bytes.baseAddress else { return nil }
        guard let hit = memchr(base + from, Int32(byte), bytes.count - from) else { return nil }
        return base.distance(to: UnsafeRawPointer(hit))
    }

    /// Index just past `a b` (e.g. "?>").
    private static func find2(_ a: UInt8, _ b: UInt8, in bytes: UnsafeRawBufferPointer, from: Int) -> Int? {
        var index = from
        while index + 1 < bytes.count {
            if bytes[index] == a && bytes[index + 1] == b { return index + 2 }
            index += 1
        }
        return nil
    }

    /// Index just past the sequence.
    private static func findSequence(_ sequence: [UInt8], in bytes: UnsafeRawBufferPointer, from: Int) -> Int? {
        var index = from
        while index + sequence.count <= bytes.count {
            var matched = true
            for offset in 0..<sequence.count where bytes[index + offset] != sequence[offset] {
                matched = false
                break
            }
            if matched { return index + sequence.count }
            index += 1
        }
        return nil
    }

    private static func hasPrefix(_ bytes: UnsafeRawBufferPointer, at index: Int, _ prefix: StaticString) -> Bool {
        let length = prefix.utf8CodeUnitCount
        guard index + length <= bytes.count else { return false }
        let start = prefix.utf8Start
        for offset in 0..<length where bytes[index + offset] != start[offset] {
            return false
        }
        return true
    }

    /// The index of the '>' closing a start tag, skipping quoted attribute values.
    private static func findTagEnd(_ bytes: UnsafeRawBufferPointer, from: Int) -> Int? {
        var index = from
        let count = bytes.count
        while index < count {
            let byte = bytes[index]
            if byte == gt { return index }
            if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "'") {
                guard let close = find(byte, in: bytes, from: index + 1) else { return nil }
                index = close + 1
                continue
            }
            index += 1
        }
        return nil
    }
}

/// Cheap reads of a serialised element's start tag, for the message hot path.
enum FastScan {
    /// Whether `element` starts with the start tag of `<name` (no prefix, e.g. "message").
    static func isElement(_ element: ByteBuffer, named name: StaticString) -> Bool {
        element.withUnsafeReadableBytes { bytes in
            let length = name.utf8CodeUnitCount
            guard bytes.count > length + 1, bytes[0] == UInt8(ascii: "<") else { return false }
            let start = name.utf8Start
            for offset in 0..<length where bytes[offset + 1] != start[offset] {
                return false
            }
            let after = bytes[length + 1]
            return after == 0x20 || after == 0x09 || after == 0x0A || after == 0x0D || after == UInt8(ascii: ">") || after == UInt8(ascii: "/")
        }
    }

    /// The `id` and `type` attributes of the element's start tag, as raw (unescaped) values.
    /// `id` is returned only if it is a decimal number behind `prefix`.
    static func idNumberAndType(_ element: ByteBuffer, idPrefix: StaticString) -> (id: UInt64?, isError: Bool) {
        element.withUnsafeReadableBytes { bytes in
            var id: UInt64?
            var isError = false
            let count = bytes.count
            var index = 1
            // Skip the element name.
            while index < count, !isSpace(bytes[index]), bytes[index] != UInt8(ascii: ">"), bytes[index] != UInt8(ascii: "/") {
                index += 1
            }
            while index < count {
                while index < count, isSpace(bytes[index]) { index += 1 }
                guard index < count else { break }
                let byte = bytes[index]
                if byte == UInt8(ascii: ">") || byte == UInt8(ascii: "/") { break }
                let nameStart = index
                while index < count, bytes[index] != UInt8(ascii: "="), !isSpace(bytes[index]) { index += 1 }
                let nameEnd = index
                while index < count, isSpace(bytes[index]) || bytes[index] == UInt8(ascii: "=") { index += 1 }
                guard index < count else { break }
                let quote = bytes[index]
                guard quote == UInt8(ascii: "\"") || quote == UInt8(ascii: "'") else { break }
                let valueStart = index + 1
                var valueEnd = valueStart
                while valueEnd < count, bytes[valueEnd] != quote { valueEnd += 1 }
                index = valueEnd + 1
                let nameLength = nameEnd - nameStart
                if nameLength == 2, bytes[nameStart] == UInt8(ascii: "i"), bytes[nameStart + 1] == UInt8(ascii: "d") {
                    id = number(bytes, from: valueStart, to: valueEnd, prefix: idPrefix)
                } else if nameLength == 4, bytes[nameStart] == UInt8(ascii: "t"), bytes[nameStart + 1] == UInt8(ascii: "y"),
                    bytes[nameStart + 2] == UInt8(ascii: "p"), bytes[nameStart + 3] == UInt8(ascii: "e")
                {
                    isError = valueEnd - valueStart == 5 && bytes[valueStart] == UInt8(ascii: "e")
                        && bytes[valueStart + 1] == UInt8(ascii: "r") && bytes[valueStart + 4] == UInt8(ascii: "r")
                }
            }
            return (id, isError)
        }
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }

    private static func number(_ bytes: UnsafeRawBufferPointer, from: Int, to: Int, prefix: StaticString) -> UInt64? {
        let prefixLength = prefix.utf8CodeUnitCount
        guard to - from > prefixLength else { return nil }
        let start = prefix.utf8Start
        for offset in 0..<prefixLength where bytes[from + offset] != start[offset] {
            return nil
        }
        var value: UInt64 = 0
        var index = from + prefixLength
        while index < to {
            let digit = bytes[index]
            guard digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else { break }
            value = value &* 10 &+ UInt64(digit - UInt8(ascii: "0"))
            index += 1
        }
        return value
    }
}
