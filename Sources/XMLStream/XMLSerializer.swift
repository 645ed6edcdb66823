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

    /// Serialises to a `String` (tests, logs, storage).
    public static func string(_ element: XMLElement, defaultNamespace: String = "") -> String {
        // A routed chat message with its stanza-id is 300–500 bytes: started at 256 the buffer
        // was reallocated (and copied) for nearly every one. It lives only until the string is made.
        var buffer = ByteBufferAllocator().buffer(capacity: 1024)
        write(element, into: &buffer, defaultNamespace: defaultNamespace, streamPrefixDeclared: false)
        return buffer.readString(length: buffer.readableBytes) ?? ""
    }

    private static func writeElement(
        _ element: XMLElement,
        into buffer: inout ByteBuffer,
        defaultNamespace: String,
        streamPrefixDeclared: Bool
    ) {
        let isStreamNamespace = element.namespace == XMLNamespace.streams
        buffer.writeStaticString("<")
        if isStreamNamespace {
            buffer.writeStaticString("stream:")
        }
        buffer.writeString(element.name)
        var childDefault = defaultNamespace
        var childStreamDeclared = streamPrefixDeclared
        if isStreamNamespace {
            if !streamPrefixDeclared {
                buffer.writeStaticString(" xmlns:stream=\"http://etherx.jabber.org/streams\"")
                childStreamDeclared = true
            }
        } else if element.namespace != defaultNamespace {
            buffer.writeStaticString(" xmlns=\"")
            writeEscaped(element.namespace, into: &buffer, attribute: true)
            buffer.writeStaticString("\"")
            childDefault = element.namespace
        }
        var extraPrefix = 0
        for attribute in element.attributes {
            buffer.writeStaticString(" ")
            if !attribute.namespace.isEmpty {
                if attribute.namespace == XMLNamespace.xml {
                    buffer.writeStaticString("xml:")
                } else {
                    extraPrefix += 1
                    buffer.writeString("xmlns:a\(extraPrefix)=\"")
                    writeEscaped(attribute.namespace, into: &buffer, attribute: true)
                    buffer.writeString("\" a\(extraPrefix):")
                }
            }
            buffer.writeString(attribute.name)
            buffer.writeStaticString("=\"")
            writeEscaped(attribute.value, into: &buffer, attribute: true)
            buffer.writeStaticString("\"")
        }
        if element.children.isEmpty {
            buffer.writeStaticString("/>")
            return
        }
        buffer.writeStaticString(">")
        for child in element.children {
            switch child {
            case .element(let childElement):
                writeElement(childElement, into: &buffer, defaultNamespace: childDefault, streamPrefixDeclared: childStreamDeclared)
            case .text(let text):
                writeEscaped(text, into: &buffer, attribute: false)
            }
        }
        buffer.writeStaticString("</")
        if isStreamNamespace {
            buffer.writeStaticString("stream:")
        }
        buffer.writeString(element.name)
        buffer.writeStaticString(">")
    }

    /// Escapes `&`, `<`, `>` (and quotes in attributes) while copying runs of safe bytes at once.
    public static func writeEscaped(_ string: String, into buffer: inout ByteBuffer, attribute: Bool) {
        var string = string
        string.withUTF8 { bytes in
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
                        buffer.writeBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(bytes)[runStart..<index]))
                    }
                    buffer.writeStaticString(replacement)
                    runStart = index + 1
                }
                index += 1
            }
            if count > runStart {
                buffer.writeBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(bytes)[runStart..<count]))
            }
        }
    }
}
