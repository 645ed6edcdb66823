import CExpat
import XMLStream
import NIOCore

/// Incremental parser for one XMPP stream, built on libexpat.
///
/// Feed it bytes as they arrive; it reports the stream open, each complete top-level
/// element and the stream close. It enforces RFC 6120 §11's restricted XML (no DTD,
/// entity declarations, comments or processing instructions), and bounds stanza size
/// and depth so a peer cannot make it hold more than `limits` allow. A DOCTYPE stops
/// the parser before any entity is declared, so "billion laughs" costs nothing.
///
/// A stream restart (after STARTTLS or SASL) needs a new parser; one instance
/// parses exactly one XML document.
final class ExpatStreamParser {
    /// How the byte stream is framed.
    enum Framing: Sendable {
        /// RFC 6120 TCP stream: one document whose root is `<stream:stream>`.
        case stream
        /// RFC 7395 WebSocket: a sequence of standalone elements (`<open/>`, stanzas, `<close/>`).
        /// They are reported as `.element` events; the framing element names are left to the caller.
        case framed
    }

    private static let separator: CChar = 0x01

    private let parser: XML_Parser
    private let limits: XMLStreamLimits
    private let framing: Framing
    private var stack: [XMLElement] = []
    private var depth = 0
    private var events: [XMLStreamEvent] = []
    private var failure: XMLStreamError?
    private var bytesFed: Int64 = 0
    /// Byte index at which the current unbounded run started (stream start, or end of the last top-level element).
    private var boundary: Int64 = 0
    private var syntheticPrefixLength: Int64 = 0

    init(limits: XMLStreamLimits = XMLStreamLimits(), framing: Framing = .stream) {
        // XML_ParserCreateNS only fails on allocation failure; there is no sensible recovery then.
        guard let parser = XML_ParserCreateNS("UTF-8", Self.separator) else {
            fatalError("libexpat could not allocate a parser")
        }
        self.parser = parser
        self.limits = limits
        self.framing = framing
        XML_SetUserData(parser, Unmanaged.passUnretained(self).toOpaque())
        XML_SetElementHandler(parser, xmlStreamStartElement, xmlStreamEndElement)
        XML_SetCharacterDataHandler(parser, xmlStreamCharacterData)
        XML_SetStartDoctypeDeclHandler(parser, xmlStreamDoctype)
        XML_SetEntityDeclHandler(parser, xmlStreamEntityDecl)
        XML_SetProcessingInstructionHandler(parser, xmlStreamProcessingInstruction)
        XML_SetCommentHandler(parser, xmlStreamComment)
        XML_SetParamEntityParsing(parser, XML_PARAM_ENTITY_PARSING_NEVER)
        if framing == .framed {
            // A synthetic root makes the sequence of frames one document.
            let prefix = "<framing xmlns:stream='http://etherx.jabber.org/streams'>"
            syntheticPrefixLength = Int64(prefix.utf8.count)
            var copy = prefix
            copy.withUTF8 { bytes in
                bytes.withMemoryRebound(to: CChar.self) { chars in
                    _ = XML_Parse(parser, chars.baseAddress, Int32(chars.count), 0)
                }
            }
            bytesFed = syntheticPrefixLength
            boundary = bytesFed
            events.removeAll()
        }
    }

    deinit {
        XML_ParserFree(parser)
    }

    /// Parses `buffer`'s readable bytes and calls `body` for each event completed by them.
    /// - Throws: `XMLStreamError` on the first violation; the parser is unusable afterwards.
    func feed(_ buffer: ByteBuffer, _ body: (XMLStreamEvent) throws -> Void) throws {
        try buffer.withUnsafeReadableBytes { bytes in
            try feed(bytes, body)
        }
    }

    /// Parses raw bytes; see `feed(_:_:)`.
    func feed(_ bytes: UnsafeRawBufferPointer, _ body: (XMLStreamEvent) throws -> Void) throws {
        if let failure { throw failure }
        // Feed in bounded slices so a single huge read cannot grow one element past the limit
        // before the callbacks get a chance to check it.
        let slice = 16_384
        var offset = 0
        while offset < bytes.count || (bytes.count == 0 && offset == 0) {
            let end = min(bytes.count, offset + slice)
            let chunk = UnsafeRawBufferPointer(rebasing: bytes[offset..<end])
            let status = chunk.withMemoryRebound(to: CChar.self) { chars in
                XML_Parse(parser, chars.baseAddress, Int32(chars.count), 0)
            }
            bytesFed += Int64(chunk.count)
            if status != XML_STATUS_OK {
                let error = failure ?? Self.classify(XML_GetErrorCode(parser), chunk)
                failure = error
                events.removeAll()
                throw error
            }
            if bytesFed - boundary > Int64(limits.maxStanzaBytes) {
                let error = XMLStreamError(.policyViolation, "stanza exceeds \(limits.maxStanzaBytes) bytes")
                failure = error
                events.removeAll()
                throw error
            }
            if !events.isEmpty {
                let ready = events
                events.removeAll(keepingCapacity: true)
                for event in ready { try body(event) }
            }
            offset = end
            if bytes.count == 0 { break }
        }
    }

    /// Expat calls a markup declaration inside the document a syntax error; XMPP calls it
    /// restricted XML (RFC 6120 §11.1). If the failing chunk holds `<!` followed by a letter
    /// (DOCTYPE, ENTITY, ELEMENT …, not CDATA), report that.
    private static func classify(_ code: XML_Error, _ chunk: UnsafeRawBufferPointer) -> XMLStreamError {
        if chunk.count >= 3 {
            for index in 0..<(chunk.count - 2)
            where chunk[index] == UInt8(ascii: "<") && chunk[index + 1] == UInt8(ascii: "!") {
                let next = chunk[index + 2]
                if (next >= UInt8(ascii: "A") && next <= UInt8(ascii: "Z")) || (next >= UInt8(ascii: "a") && next <= UInt8(ascii: "z")) {
                    return XMLStreamError(.restrictedXML, "markup declarations are not allowed")
                }
            }
        }
        return XMLStreamError(.notWellFormed, describe(code))
    }

    private static func describe(_ code: XML_Error) -> String {
        guard let message = XML_ErrorString(code) else { return "XML syntax error" }
        return String(cString: message)
    }

    // MARK: - Callbacks (called by expat on this thread, during `feed`)

    fileprivate func fail(_ error: XMLStreamError) {
        if failure == nil { failure = error }
        XML_StopParser(parser, XML_FALSE)
    }

    private var currentIndex: Int64 { Int64(XML_GetCurrentByteIndex(parser)) }

    fileprivate func startElement(_ name: UnsafePointer<CChar>, _ attributes: UnsafeMutablePointer<UnsafePointer<CChar>?>?) {
        guard failure == nil else { return }
        depth += 1
        if depth > limits.maxDepth {
            fail(XMLStreamError(.policyViolation, "elements nested deeper than \(limits.maxDepth)"))
            return
        }
        let (namespace, local) = Self.split(name)
        var element = XMLElement(name: local, namespace: namespace)
        if let attributes {
            var index = 0
            while let attributeName = attributes[index], let value = attributes[index + 1] {
                let (attributeNamespace, attributeLocal) = Self.split(attributeName)
                element.attributes.append(
                    XMLAttribute(name: attributeLocal, namespace: attributeNamespace, value: String(cString: value))
                )
                index += 2
            }
        }
        if depth == 1 {
            if framing == .stream {
                events.append(.streamOpened(element))
            }
            stack.append(element)
            return
        }
        if depth == 2 {
            boundary = currentIndex
        }
        stack.append(element)
    }

    fileprivate func endElement() {
        guard failure == nil else { return }
        defer { depth -= 1 }
        if depth == 1 {
            stack.removeAll()
            if framing == .stream {
                events.append(.streamClosed)
            }
            return
        }
        guard let element = stack.popLast() else { return }
        if depth == 2 {
            let end = currentIndex + Int64(XML_GetCurrentByteCount(parser))
            if end - boundary > Int64(limits.maxStanzaBytes) {
                fail(XMLStreamError(.policyViolation, "stanza exceeds \(limits.maxStanzaBytes) bytes"))
                return
            }
            events.append(.element(element))
            boundary = end
        } else if !stack.isEmpty {
            stack[stack.count - 1].children.append(.element(element))
        }
    }

    fileprivate func characterData(_ data: UnsafePointer<CChar>, _ length: Int32) {
        guard failure == nil, length > 0 else { return }
        if depth <= 1 {
            // Between top-level elements only whitespace (keep-alives) is allowed.
            let bytes = UnsafeRawBufferPointer(start: data, count: Int(length))
            for byte in bytes where !(byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D) {
                fail(XMLStreamError(.badFormat, "text outside a stanza"))
                return
            }
            boundary = currentIndex + Int64(length)
            return
        }
        if currentIndex + Int64(length) - boundary > Int64(limits.maxStanzaBytes) {
            fail(XMLStreamError(.policyViolation, "stanza exceeds \(limits.maxStanzaBytes) bytes"))
            return
        }
        let text = String(
            decoding: UnsafeRawBufferPointer(start: data, count: Int(length)),
            as: UTF8.self
        )
        let last = stack.count - 1
        if case .text(let previous)? = stack[last].children.last {
            stack[last].children[stack[last].children.count - 1] = .text(previous + text)
        } else {
            stack[last].children.append(.text(text))
        }
    }

    /// Splits expat's "namespace<SEP>local" into its parts.
    private static func split(_ name: UnsafePointer<CChar>) -> (String, String) {
        var cursor = name
        while cursor.pointee != 0 {
            if cursor.pointee == separator {
                let namespaceLength = name.distance(to: cursor)
                let namespace = name.withMemoryRebound(to: UInt8.self, capacity: namespaceLength) {
                    String(decoding: UnsafeBufferPointer(start: $0, count: namespaceLength), as: UTF8.self)
                }
                return (namespace, String(cString: cursor + 1))
            }
            cursor += 1
        }
        return ("", String(cString: name))
    }
}

private func parserFrom(_ userData: UnsafeMutableRawPointer?) -> ExpatStreamParser? {
    guard let userData else { return nil }
    return Unmanaged<ExpatStreamParser>.fromOpaque(userData).takeUnretainedValue()
}

private func xmlStreamStartElement(
    _ userData: UnsafeMutableRawPointer?,
    _ name: UnsafePointer<XML_Char>?,
    _ attributes: UnsafeMutablePointer<UnsafePointer<XML_Char>?>?
) {
    guard let name else { return }
    parserFrom(userData)?.startElement(name, attributes)
}

private func xmlStreamEndElement(_ userData: UnsafeMutableRawPointer?, _ name: UnsafePointer<XML_Char>?) {
    parserFrom(userData)?.endElement()
}

private func xmlStreamCharacterData(_ userData: UnsafeMutableRawPointer?, _ data: UnsafePointer<XML_Char>?, _ length: Int32) {
    guard let data else { return }
    parserFrom(userData)?.characterData(data, length)
}

private func xmlStreamDoctype(
    _ userData: UnsafeMutableRawPointer?,
    _ name: UnsafePointer<XML_Char>?,
    _ systemID: UnsafePointer<XML_Char>?,
    _ publicID: UnsafePointer<XML_Char>?,
    _ hasInternalSubset: Int32
) {
    parserFrom(userData)?.fail(XMLStreamError(.restrictedXML, "document type declarations are not allowed"))
}

private func xmlStreamEntityDecl(
    _ userData: UnsafeMutableRawPointer?,
    _ name: UnsafePointer<XML_Char>?,
    _ isParameterEntity: Int32,
    _ value: UnsafePointer<XML_Char>?,
    _ valueLength: Int32,
    _ base: UnsafePointer<XML_Char>?,
    _ systemID: UnsafePointer<XML_Char>?,
    _ publicID: UnsafePointer<XML_Char>?,
    _ notationName: UnsafePointer<XML_Char>?
) {
    parserFrom(userData)?.fail(XMLStreamError(.restrictedXML, "entity declarations are not allowed"))
}

private func xmlStreamProcessingInstruction(
    _ userData: UnsafeMutableRawPointer?,
    _ target: UnsafePointer<XML_Char>?,
    _ data: UnsafePointer<XML_Char>?
) {
    parserFrom(userData)?.fail(XMLStreamError(.restrictedXML, "processing instructions are not allowed"))
}

private func xmlStreamComment(_ userData: UnsafeMutableRawPointer?, _ data: UnsafePointer<XML_Char>?) {
    parserFrom(userData)?.fail(XMLStreamError(.restrictedXML, "comments are not allowed"))
}
