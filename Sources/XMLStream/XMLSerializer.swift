import NIOCore

/// Writes elements as XML text, declaring namespaces only where they change.
///
/// Elements in the streams namespace use the `stream:` prefix that the stream header
/// declares; `streamPrefixDeclared: false` (WebSocket framing, where each frame stands
/// alone) adds the declaration on the element itself.
public enum XMLSerializer {
    /// Appends `element` to `buffer`.
    /// - Parameters:
    ///   - defaultNamespace: the default namespace in scope where the element is written
    ///     (`jabber:client` for top-level stanzas of a client stream).
    ///   - streamPrefixDeclared: whether `xmlns:stream` is in scope.
    public static func write(
        _ element: XMLElement,
        into buffer: inout ByteBuffer,
        defaultNamespace: String,
        streamPrefixDeclared: Bool = true
    ) {
        writeElement(element, into: &buffer, defaultNamespace: defaultNamespace, streamPrefixDeclared: streamPrefixDeclared)
    }

    /// Serialises to a `String` (tests, logs, storage; the router makes one per message).
    ///
    /// One pass into a buffer on the stack, then one copy into the string; a stanza larger than
    /// the buffer takes two passes (`exactString`: count, then write into the string's storage).
    /// (Through a `ByteBuffer` it was two more allocations, a copy, and a capacity check per
    /// piece written.)
    public static func string(_ element: XMLElement, defaultNamespace: String = "") -> String {
        // (A pass over the tree retains and releases its texts; copying bytes does not.)
        let small = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: stackBytes) { storage -> String? in
            var writer = BoundedWriter(storage)
            writeElement(element, into: &writer, defaultNamespace: defaultNamespace, streamPrefixDeclared: false)
            guard !writer.overflowed else { return nil }
            let written = UnsafeBufferPointer(rebasing: storage[..<writer.count])
            return String(unsafeUninitializedCapacity: written.count) { target in
                guard let source = written.baseAddress, let destination = target.baseAddress else { return 0 }
                destination.update(from: source, count: written.count)
                return written.count
            }
        }
        if let small { return small }
        if let text = exactString(element, defaultNamespace: defaultNamespace) { return text }
        // Not expected (both passes run the same code): the buffered way, never a short text.
        var buffer = ByteBufferAllocator().buffer(capacity: 1024)
        write(element, into: &buffer, defaultNamespace: defaultNamespace, streamPrefixDeclared: false)
        return buffer.readString(length: buffer.readableBytes) ?? ""
    }

    /// The one-pass buffer's size. Swift places a temporary allocation on the stack only up to
    /// 1,024 bytes; above that (on Linux) it is a `posix_memalign` and a `free` per call, which
    /// cost more than a second pass (measured: a 4 KiB buffer was one large-bin allocation per
    /// routed message, a sixth of the event loop's time in malloc).
    static let stackBytes = 1024

    /// The two-pass string; nil if the passes disagreed on the length.
    static func exactString(_ element: XMLElement, defaultNamespace: String) -> String? {
        var counter = ByteCounter()
        writeElement(element, into: &counter, defaultNamespace: defaultNamespace, streamPrefixDeclared: false)
        let length = counter.count
        var exact = false
        let text = String(unsafeUninitializedCapacity: length) { storage in
            var writer = BoundedWriter(storage)
            writeElement(element, into: &writer, defaultNamespace: defaultNamespace, streamPrefixDeclared: false)
            exact = !writer.overflowed && writer.count == length
            return writer.overflowed ? 0 : writer.count
        }
        return exact ? text : nil
    }

    private static func writeElement<Sink: XMLByteSink>(
        _ element: XMLElement,
        into buffer: inout Sink,
        defaultNamespace: String,
        streamPrefixDeclared: Bool
    ) {
        let isStreamNamespace = element.namespace == XMLNamespace.streams
        buffer.putStatic("<")
        if isStreamNamespace {
            buffer.putStatic("stream:")
        }
        buffer.putString(element.name)
        var childDefault = defaultNamespace
        var childStreamDeclared = streamPrefixDeclared
        if isStreamNamespace {
            if !streamPrefixDeclared {
                buffer.putStatic(" xmlns:stream=\"http://etherx.jabber.org/streams\"")
                childStreamDeclared = true
            }
        } else if element.namespace != defaultNamespace {
            buffer.putStatic(" xmlns=\"")
            escape(element.namespace, into: &buffer, attribute: true)
            buffer.putStatic("\"")
            childDefault = element.namespace
        }
        var extraPrefix = 0
        // Attributes and children are read where they are (through the arrays' buffers):
        // iterating the arrays copies each one, retaining and releasing what it holds.
        element.attributes.withUnsafeBufferPointer { attributes in
            guard let attributes = attributes.baseAddress else { return }
            for index in 0..<element.attributes.count {
                let attribute = attributes + index
                buffer.putStatic(" ")
                if !attribute.pointee.namespace.isEmpty {
                    if attribute.pointee.namespace == XMLNamespace.xml {
                        buffer.putStatic("xml:")
                    } else {
                        extraPrefix += 1
                        buffer.putString("xmlns:a\(extraPrefix)=\"")
                        escape(attribute.pointee.namespace, into: &buffer, attribute: true)
                        buffer.putString("\" a\(extraPrefix):")
                    }
                }
                buffer.putString(attribute.pointee.name)
                buffer.putStatic("=\"")
                escape(attribute.pointee.value, into: &buffer, attribute: true)
                buffer.putStatic("\"")
            }
        }
        if element.children.isEmpty {
            buffer.putStatic("/>")
            return
        }
        buffer.putStatic(">")
        element.children.withUnsafeBufferPointer { children in
            guard let children = children.baseAddress else { return }
            for index in 0..<element.children.count {
                switch children[index] {
                case .element(let childElement):
                    writeElement(childElement, into: &buffer, defaultNamespace: childDefault, streamPrefixDeclared: childStreamDeclared)
                case .text(let text):
                    escape(text, into: &buffer, attribute: false)
                }
            }
        }
        buffer.putStatic("</")
        if isStreamNamespace {
            buffer.putStatic("stream:")
        }
        buffer.putString(element.name)
        buffer.putStatic(">")
    }

    /// Escapes `&`, `<`, `>` (and quotes in attributes) while copying runs of safe bytes at once.
    public static func writeEscaped(_ string: String, into buffer: inout ByteBuffer, attribute: Bool) {
        escape(string, into: &buffer, attribute: attribute)
    }

    private static func escape<Sink: XMLByteSink>(_ string: String, into buffer: inout Sink, attribute: Bool) {
        // Native strings (all the parser and the server make) are read in place; a bridged or
        // lazily decoded one is copied first.
        if string.utf8.withContiguousStorageIfAvailable({ escape($0, into: &buffer, attribute: attribute) }) == nil {
            var string = string
            string.withUTF8 { escape($0, into: &buffer, attribute: attribute) }
        }
    }

    private static func escape<Sink: XMLByteSink>(_ bytes: UnsafeBufferPointer<UInt8>, into buffer: inout Sink, attribute: Bool) {
        var runStart = 0
        var index = 0
        let count = bytes.count
        while index < count {
            let byte = bytes[index]
            let replacement: StaticString?
            switch byte {
            case UInt8(ascii: "&"): replacement = "&amp;"
            case UInt8(ascii: "<"): replacement = "&lt;"
            case UInt8(ascii: ">"): replacement = "&gt;"
            case UInt8(ascii: "\"") where attribute: replacement = "&quot;"
            case UInt8(ascii: "'") where attribute: replacement = "&apos;"
            case 0x0D: replacement = "&#13;"
            case 0x09 where attribute: replacement = "&#9;"
            case 0x0A where attribute: replacement = "&#10;"
            default: replacement = nil
            }
            if let replacement {
                if index > runStart {
                    buffer.putBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(bytes)[runStart..<index]))
                }
                buffer.putStatic(replacement)
                runStart = index + 1
            }
            index += 1
        }
        if count > runStart {
            buffer.putBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(bytes)[runStart..<count]))
        }
    }
}

/// Where the serialiser's bytes go: a `ByteBuffer` (the wire), a counter (a string's exact
/// length), or a string's storage.
protocol XMLByteSink {
    mutating func putStatic(_ string: StaticString)
    mutating func putString(_ string: String)
    mutating func putBytes(_ bytes: UnsafeRawBufferPointer)
}

extension ByteBuffer: XMLByteSink {
    mutating func putStatic(_ string: StaticString) { writeStaticString(string) }
    mutating func putString(_ string: String) { writeString(string) }
    mutating func putBytes(_ bytes: UnsafeRawBufferPointer) { writeBytes(bytes) }
}

/// Counts what would be written.
struct ByteCounter: XMLByteSink {
    var count = 0
    mutating func putStatic(_ string: StaticString) { count += string.utf8CodeUnitCount }
    mutating func putString(_ string: String) { count += string.utf8.count }
    mutating func putBytes(_ bytes: UnsafeRawBufferPointer) { count += bytes.count }
}

/// Writes into memory of a fixed size; past its end it writes nothing more and says so.
struct BoundedWriter: XMLByteSink {
    private let storage: UnsafeMutableBufferPointer<UInt8>
    private(set) var count = 0
    private(set) var overflowed = false

    init(_ storage: UnsafeMutableBufferPointer<UInt8>) { self.storage = storage }

    mutating func putBytes(_ bytes: UnsafeRawBufferPointer) {
        guard !overflowed, bytes.count <= storage.count - count else {
            overflowed = true
            return
        }
        if let base = storage.baseAddress, let source = bytes.baseAddress {
            UnsafeMutableRawPointer(base + count).copyMemory(from: source, byteCount: bytes.count)
        }
        count += bytes.count
    }

    mutating func putStatic(_ string: StaticString) {
        // (A one-character literal has no pointer representation: withUTF8Buffer covers both.)
        string.withUTF8Buffer { putBytes(UnsafeRawBufferPointer($0)) }
    }

    mutating func putString(_ string: String) {
        if string.utf8.withContiguousStorageIfAvailable({ putBytes(UnsafeRawBufferPointer($0)) }) == nil {
            var string = string
            string.withUTF8 { putBytes(UnsafeRawBufferPointer($0)) }
        }
    }
}
