import NIOCore

/// Incremental parser for one XMPP stream: the XML subset RFC 6120 §11 allows, in pure Swift.
///
/// Feed it bytes as they arrive; it reports the stream open, each complete top-level element
/// and the stream close. It refuses what XMPP forbids (DTDs, entity declarations and
/// non-predefined entity references, comments, processing instructions: `restricted-xml`),
/// checks well-formedness (`not-well-formed`: tag nesting, attribute syntax and uniqueness,
/// namespace prefixes, UTF-8, forbidden characters) and bounds stanza size and nesting depth
/// (`policy-violation`), so a peer cannot make it hold more than `limits` allow.
///
/// Why not libexpat: an idle connection must cost a few KiB in all, and an expat parser holds
/// about 10 KiB once the stream header is parsed. This parser keeps nothing between stanzas but
/// the namespace scope of the stream root (and any incomplete token, in a buffer released as
/// soon as it drains). Its output is checked against expat's in the test suite.
///
/// ```
/// <stream:stream xmlns='jabber:client' ...>    -> .streamOpened(root, no children)
///   <message ...><body>hi</body></message>     -> .element(message)   (depth 2 complete)
/// </stream:stream>                             -> .streamClosed
/// ```
/// A stream restart (after STARTTLS or SASL) needs a new parser.
public final class XMLStreamParser {
    /// How the byte stream is framed.
    public enum Framing: Sendable {
        /// RFC 6120 TCP stream: one document whose root is `<stream:stream>`.
        case stream
        /// RFC 7395 WebSocket: a sequence of standalone elements (`<open/>`, stanzas, `<close/>`),
        /// each reported as `.element`.
        case framed
    }

    /// The namespace declarations of one open element.
    private struct Scope {
        var defaultNamespace: String
        var prefixes: [(prefix: String, uri: String)]
    }

    private let limits: XMLStreamLimits
    private let framing: Framing
    /// Bytes of an incomplete token, kept until more arrive. Released when empty.
    private var pending: [UInt8] = []
    /// Resumable scan state for the incomplete token at the start of `pending`.
    private var scanOffset = 0
    private var scanQuote: UInt8 = 0
    /// Open elements below the root (depth ≥ 2), innermost last.
    private var stack: [XMLElement] = []
    /// Qualified names of all open elements including the root, for end-tag matching.
    private var openNames: [String] = []
    private var scopes: [Scope] = []
    private var events: [XMLStreamEvent] = []
    private var failure: XMLStreamError?
    private var rootOpened = false
    private var skippedBOM = false
    private var rootClosed = false
    private var sawAnything = false
    /// Absolute index of the first byte of `pending` (or of the next byte when it is empty).
    private var consumed: Int64 = 0
    /// Absolute index where the current bounded run began (stanza start, or after the last one).
    private var boundary: Int64 = 0

    public init(limits: XMLStreamLimits = XMLStreamLimits(), framing: Framing = .stream) {
        self.limits = limits
        self.framing = framing
        if framing == .framed {
            // A synthetic root makes the sequence of frames one document. Its name contains a
            // space, so no end tag a peer sends can close it.
            openNames.append(" framing")
            scopes.append(Scope(defaultNamespace: "", prefixes: [("stream", XMLNamespace.streams)]))
            rootOpened = true
            sawAnything = true
        }
    }

    /// Parses `buffer`'s readable bytes and calls `body` for each event completed by them.
    /// - Throws: `XMLStreamError` on the first violation; the parser is unusable afterwards.
    public func feed(_ buffer: ByteBuffer, _ body: (consuming XMLStreamEvent) throws -> Void) throws {
        try buffer.withUnsafeReadableBytes { bytes in
            try feed(bytes, body)
        }
    }

    /// Parses raw bytes; see `feed(_:_:)`.
    public func feed(_ bytes: UnsafeRawBufferPointer, _ body: (consuming XMLStreamEvent) throws -> Void) throws {
        if let failure { throw failure }
        // Bounded slices: no single call can build an element far past the size limit.
        let slice = 16_384
        var offset = 0
        repeat {
            let end = min(bytes.count, offset + slice)
            let chunk = UnsafeRawBufferPointer(rebasing: bytes[offset..<end])
            do {
                try parse(chunk)
            } catch let error as XMLStreamError {
                failure = error
                events.removeAll()
                pending = []
                stack = []
                throw error
            }
            if !events.isEmpty {
                // Handed over, not copied (a copy would retain what each element holds, and
                // emptying the shared array would allocate a new one); the capacity comes back.
                var ready: [XMLStreamEvent] = []
                swap(&ready, &events)
                try ready.moveEach(leaving: .streamClosed, body)
                if events.isEmpty { swap(&ready, &events) }
            }
            offset = end
        } while offset < bytes.count
    }

    /// Bytes held for an incomplete token (tests check this stays bounded).
    var retainedBytes: Int { pending.capacity }
    /// Elements currently open, the root included (tests).
    var openDepth: Int { openNames.count }

    // MARK: - Tokenising

    private func parse(_ chunk: UnsafeRawBufferPointer) throws {
        let consumedBytes: Int
        if pending.isEmpty {
            consumedBytes = try chunk.withMemoryRebound(to: UInt8.self) { try tokens($0) }
            if consumedBytes < chunk.count {
                pending.append(contentsOf: chunk[consumedBytes...])
            }
            consumed += Int64(consumedBytes)
        } else {
            pending.append(contentsOf: chunk)
            consumedBytes = try pending.withUnsafeBufferPointer { try tokens($0) }
            if consumedBytes == pending.count {
                pending = []
            } else if consumedBytes > 0 {
                pending.removeFirst(consumedBytes)
            }
            consumed += Int64(consumedBytes)
        }
        if pending.isEmpty {
            pending = []  // give the capacity back: idle connections hold nothing
            if openNames.count <= 1 { boundary = consumed }
        }
        if consumed + Int64(pending.count) - boundary > Int64(limits.maxStanzaBytes) {
            throw XMLStreamError(.policyViolation, "stanza exceeds \(limits.maxStanzaBytes) bytes")
        }
    }

    /// Consumes complete tokens from `p`; returns how many bytes were consumed. An incomplete
    /// token at the end stays for the next call (its scan position is remembered).
    private func tokens(_ p: UnsafeBufferPointer<UInt8>) throws -> Int {
        var i = 0
        let n = p.count
        while i < n {
            if rootClosed {
                // Anything after the stream closed is ignored; the connection is ending.
                return n
            }
            if p[i] == UInt8(ascii: "<") {
                guard let next = try markup(p, at: i) else { return i }
                i = next
            } else {
                let next = try text(p, at: i)
                if next == i { return i }
                i = next
            }
            // Between stanzas the size count restarts after every token, so the stream header
            // and keep-alive whitespace never count towards the next stanza, however the bytes
            // were chunked (found by ParserFuzzTests: whole and chunked feeding disagreed).
            if openNames.count <= 1 { boundary = consumed + Int64(i) }
        }
        return i
    }

    /// Parses the markup starting at `p[i] == '<'`; returns the index after it, or nil if incomplete.
    private func markup(_ p: UnsafeBufferPointer<UInt8>, at i: Int) throws -> Int? {
        let n = p.count
        guard i + 1 < n else { return nil }
        switch p[i + 1] {
        case UInt8(ascii: "/"):
            // End tag: a name, optional whitespace, '>'; anything else fails at once.
            var close = max(i + 2, i + scanOffset)
            var sawSpace = false
            while close < n, p[close] != UInt8(ascii: ">") {
                let byte = p[close]
                if isWhitespace(byte) {
                    sawSpace = true
                } else if sawSpace || !isNameChar(byte) {
                    throw XMLStreamError(.notWellFormed, "malformed end tag")
                }
                close += 1
            }
            guard close < n else {
                scanOffset = n - i
                return nil
            }
            scanOffset = 0
            try endTag(p, from: i + 2, to: close)
            sawAnything = true
            return close + 1
        case UInt8(ascii: "!"):
            guard i + 2 < n else { return nil }
            if p[i + 2] == UInt8(ascii: "[") {
                let marker = Array("<![CDATA[".utf8)
                for k in 0..<marker.count {
                    guard i + k < n else { return nil }
                    guard p[i + k] == marker[k] else { throw XMLStreamError(.notWellFormed, "malformed CDATA section") }
                }
                guard openNames.count >= 2 else { throw XMLStreamError(.badFormat, "text outside a stanza") }
                guard let end = findSequence(p, from: max(i + 9, i + scanOffset - 2), UInt8(ascii: "]"), UInt8(ascii: "]"), UInt8(ascii: ">")) else {
                    scanOffset = n - i
                    return nil
                }
                scanOffset = 0
                try appendText(p, from: i + 9, to: end, decodeReferences: false)
                return end + 3
            }
            throw XMLStreamError(.restrictedXML, p[i + 2] == UInt8(ascii: "-")
                ? "comments are not allowed" : "document type and markup declarations are not allowed")
        case UInt8(ascii: "?"):
            // Only the XML declaration ("<?xml" + whitespace) is allowed; decide as soon as the
            // bytes allow, so a processing instruction fails at once.
            let marker = Array("<?xml".utf8)
            for k in 2..<6 {
                guard i + k < n else { return nil }
                if k < marker.count {
                    guard p[i + k] == marker[k] else { throw XMLStreamError(.restrictedXML, "processing instructions are not allowed") }
                } else if !isWhitespace(p[i + k]) {
                    throw XMLStreamError(.restrictedXML, "processing instructions are not allowed")
                }
            }
            guard !sawAnything, consumed + Int64(i) == (skippedBOM ? 3 : 0) else {
                throw XMLStreamError(.notWellFormed, "XML declaration not at the start of the stream")
            }
            var close = max(i + 5, i + scanOffset)
            while close < n, p[close] != UInt8(ascii: ">") {
                if p[close] == UInt8(ascii: "<") { throw XMLStreamError(.notWellFormed, "malformed XML declaration") }
                close += 1
            }
            guard close < n else {
                scanOffset = n - i
                return nil
            }
            scanOffset = 0
            guard p[close - 1] == UInt8(ascii: "?") else { throw XMLStreamError(.notWellFormed, "malformed XML declaration") }
            try xmlDeclaration(p, from: i + 5, to: close - 1)
            sawAnything = true
            return close + 1
        default:
            // Start tag: find its '>' outside quoted attribute values (resumable scan). The scan
            // state is 0 outside values, 1 right after '=', or the quote character inside a value;
            // a stray quote or an unquoted value fails at once instead of waiting for more bytes.
            var k = max(i + 1, i + scanOffset)
            var state = scanOffset > 0 ? scanQuote : 0
            scan: while k < n {
                let byte = p[k]
                switch state {
                case 0:
                    if byte == UInt8(ascii: ">") { break scan }
                    if byte == UInt8(ascii: "=") {
                        state = 1
                    } else if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "'") {
                        throw XMLStreamError(.notWellFormed, "unexpected quote in a tag")
                    } else if byte == UInt8(ascii: "<") {
                        throw XMLStreamError(.notWellFormed, "'<' inside a tag")
                    }
                case 1:
                    if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "'") {
                        state = byte
                    } else if !isWhitespace(byte) {
                        throw XMLStreamError(.notWellFormed, "attribute value not quoted")
                    }
                default:
                    if byte == state {
                        state = 0
                    } else if byte == UInt8(ascii: "<") {
                        throw XMLStreamError(.notWellFormed, "'<' in an attribute value")
                    }
                }
                k += 1
            }
            guard k < n else {
                scanOffset = k - i
                scanQuote = state
                return nil
            }
            scanOffset = 0
            scanQuote = 0
            try startTag(p, from: i + 1, to: k)
            sawAnything = true
            return k + 1
        }
    }

    /// Character data from `i` up to the next '<' (or a safe point before the end).
    private func text(_ p: UnsafeBufferPointer<UInt8>, at i: Int) throws -> Int {
        let n = p.count
        var end = i
        while end < n && p[end] != UInt8(ascii: "<") { end += 1 }
        if openNames.count <= 1 {
            // Before the root, between stanzas or after: whitespace only (keep-alives).
            if consumed + Int64(i) == 0, p[i] == 0xEF {
                // A UTF-8 byte order mark may open the stream; wait until all three bytes are here.
                guard n - i >= 3 else { return i }
                if p[i + 1] == 0xBB, p[i + 2] == 0xBF {
                    skippedBOM = true
                    return i + 3
                }
            }
            for k in i..<end where !isWhitespace(p[k]) {
                throw XMLStreamError(openNames.isEmpty ? .notWellFormed : .badFormat, "text outside a stanza")
            }
            return end
        }
        var safeEnd = end
        if end == n {
            // Keep back what may continue in the next chunk: an unterminated reference, a split
            // UTF-8 sequence, a CR (CRLF normalisation) or ']' / ']]' (a "]]>" check).
            // A reference is held back whatever its length while only name characters (or '#')
            // follow its '&' (a fixed 12-byte look-back made chunking change the error condition
            // for long names; found by ParserFuzzTests). The scan stops at the first other byte.
            var k = end
            while k > i {
                k -= 1
                let byte = p[k]
                if byte == UInt8(ascii: "&") {
                    safeEnd = k
                    break
                }
                if !(isNameChar(byte) || byte == UInt8(ascii: "#")) { break }
            }
            var back = 0
            while back < 3, safeEnd - back - 1 >= i, p[safeEnd - back - 1] & 0xC0 == 0x80 { back += 1 }
            if safeEnd - back - 1 >= i {
                let lead = p[safeEnd - back - 1]
                let length = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1
                if length > back + 1 { safeEnd = safeEnd - back - 1 }
            }
            while safeEnd > i, p[safeEnd - 1] == UInt8(ascii: "]") || p[safeEnd - 1] == 0x0D { safeEnd -= 1 }
        }
        if safeEnd > i {
            try appendText(p, from: i, to: safeEnd, decodeReferences: true)
        }
        return safeEnd
    }

    // MARK: - Tags

    private func startTag(_ p: UnsafeBufferPointer<UInt8>, from start: Int, to end: Int) throws {
        var i = start
        let qname = try name(p, &i, end)
        var attributes: [(qname: String, value: String)] = []
        var selfClosing = false
        while true {
            let hadSpace = skipWhitespace(p, &i, end)
            if i >= end { break }
            if p[i] == UInt8(ascii: "/") {
                guard i + 1 == end else { throw XMLStreamError(.notWellFormed, "'/' inside a tag") }
                selfClosing = true
                break
            }
            guard hadSpace else { throw XMLStreamError(.notWellFormed, "attributes must be separated by whitespace") }
            let attributeName = try name(p, &i, end)
            skipWhitespace(p, &i, end)
            guard i < end, p[i] == UInt8(ascii: "=") else { throw XMLStreamError(.notWellFormed, "attribute without value") }
            i += 1
            skipWhitespace(p, &i, end)
            guard i < end, p[i] == UInt8(ascii: "\"") || p[i] == UInt8(ascii: "'") else {
                throw XMLStreamError(.notWellFormed, "attribute value not quoted")
            }
            let quote = p[i]
            let valueStart = i + 1
            guard let valueEnd = find(quote, in: p, from: valueStart), valueEnd < end else {
                throw XMLStreamError(.notWellFormed, "unterminated attribute value")
            }
            for (existing, _) in attributes where existing == attributeName {
                throw XMLStreamError(.notWellFormed, "duplicate attribute")
            }
            // A stanza's top element usually has several (to, from, type, id, xmlns): one
            // allocation, and none for the many elements that have no attributes.
            if attributes.isEmpty { attributes.reserveCapacity(6) }
            attributes.append((attributeName, try decode(p, from: valueStart, to: valueEnd, attribute: true)))
            i = valueEnd + 1
        }
        try open(qname: qname, attributes: attributes, selfClosing: selfClosing, at: start - 1, endIndex: end)
    }

    private func open(
        qname: String, attributes: [(qname: String, value: String)], selfClosing: Bool, at start: Int, endIndex: Int
    ) throws {
        let depth = openNames.count + 1
        if depth > limits.maxDepth {
            throw XMLStreamError(.policyViolation, "elements nested deeper than \(limits.maxDepth)")
        }
        // (Arrays read by index here: iterating them copies each element, retaining its texts.)
        var scope = Scope(defaultNamespace: scopes.isEmpty ? "" : scopes[scopes.count - 1].defaultNamespace, prefixes: [])
        // Namespace declarations first (a prefixed attribute may come before the declaration of
        // its prefix in the same tag), then the other attributes straight into the element.
        var plainCount = 0
        for index in attributes.indices {
            let kind = Self.declarationKind(attributes[index].qname)
            if kind == .defaultNamespace {
                scope.defaultNamespace = attributes[index].value
            } else if kind == .prefix {
                let value = attributes[index].value
                let qname = attributes[index].qname
                let prefix = String(qname[qname.utf8.index(qname.utf8.startIndex, offsetBy: 6)...])
                guard !prefix.isEmpty, !prefix.contains(":"), !value.isEmpty, prefix != "xmlns",
                    prefix != "xml" || value == XMLNamespace.xml
                else {
                    throw XMLStreamError(.notWellFormed, "invalid namespace declaration")
                }
                scope.prefixes.append((prefix, value))
            } else {
                plainCount += 1
            }
        }
        scopes.append(scope)
        let (prefix, local) = try split(qname)
        var element = XMLElement(name: local, namespace: try resolve(prefix, element: true))
        // A stanza gets room for what the router adds (`from`; a stanza-id), so it is added in place.
        let isStanza = depth == 2
        if isStanza {
            element.attributes.reserveCapacity(plainCount + 1)
            element.children.reserveCapacity(4)
        }
        if plainCount > 0 {
            if !isStanza { element.attributes.reserveCapacity(plainCount) }
            for index in attributes.indices where Self.declarationKind(attributes[index].qname) == .none {
                let (attributePrefix, name) = try split(attributes[index].qname)
                let namespace = attributePrefix == nil ? "" : try resolve(attributePrefix, element: false)
                for other in element.attributes.indices where element.attributes[other].name == name && element.attributes[other].namespace == namespace {
                    throw XMLStreamError(.notWellFormed, "duplicate attribute")
                }
                element.attributes.append(XMLAttribute(name: name, namespace: namespace, value: attributes[index].value))
            }
        }
        openNames.append(qname)
        if depth == 1 {
            rootOpened = true
            if framing == .stream { events.append(.streamOpened(element)) }
            if selfClosing { try close(at: endIndex) }
            return
        }
        if isStanza { boundary = consumed + Int64(start) }
        stack.append(element)
        if selfClosing { try close(at: endIndex) }
    }

    private func endTag(_ p: UnsafeBufferPointer<UInt8>, from start: Int, to end: Int) throws {
        var i = start
        // Compared as bytes with the open element's name (no string made for an end tag).
        let bytes = UnsafeBufferPointer(rebasing: p[try nameRange(p, &i, end)])
        let matches = openNames.last.map { $0.utf8.elementsEqual(bytes) } ?? false
        if !matches, utf8String(bytes) == nil { throw XMLStreamError(.notWellFormed, "invalid UTF-8 in a name") }
        skipWhitespace(p, &i, end)
        guard i == end else { throw XMLStreamError(.notWellFormed, "junk in end tag") }
        guard matches else { throw XMLStreamError(.notWellFormed, "mismatched end tag") }
        try close(at: end)
    }

    /// Closes the innermost open element; `end` is the index of its closing '>'.
    private func close(at end: Int) throws {
        openNames.removeLast()
        scopes.removeLast()
        let depth = openNames.count + 1
        if depth == 1 {
            rootClosed = true
            if framing == .stream { events.append(.streamClosed) }
            return
        }
        guard let element = stack.popLast() else { return }
        if depth == 2 {
            let stanzaEnd = consumed + Int64(end) + 1
            if stanzaEnd - boundary > Int64(limits.maxStanzaBytes) {
                throw XMLStreamError(.policyViolation, "stanza exceeds \(limits.maxStanzaBytes) bytes")
            }
            events.append(.element(element))
            boundary = stanzaEnd
        } else {
            stack[stack.count - 1].children.append(.element(element))
        }
    }

    /// A qualified name's prefix, if any, and its local part (the name itself when unprefixed:
    /// no new string). Found by byte: XML names are code points, not grapheme clusters.
    private func split(_ qname: String) throws -> (Substring?, String) {
        let bytes = qname.utf8
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")) else { return (nil, qname) }
        let prefix = qname[..<colon]
        let local = qname[bytes.index(after: colon)...]
        guard !prefix.isEmpty, !local.isEmpty, !local.utf8.contains(UInt8(ascii: ":")) else {
            throw XMLStreamError(.notWellFormed, "malformed qualified name")
        }
        return (prefix, String(local))
    }

    private enum DeclarationKind { case none, defaultNamespace, prefix }

    /// `xmlns` declares the default namespace, `xmlns:p` a prefix (compared as bytes).
    private static func declarationKind(_ name: String) -> DeclarationKind {
        let bytes = name.utf8
        guard bytes.count >= 5, bytes.starts(with: "xmlns".utf8) else { return .none }
        if bytes.count == 5 { return .defaultNamespace }
        return bytes[bytes.index(bytes.startIndex, offsetBy: 5)] == UInt8(ascii: ":") ? .prefix : .none
    }

    private func resolve(_ prefix: Substring?, element: Bool) throws -> String {
        guard let prefix else { return element ? (scopes.last?.defaultNamespace ?? "") : "" }
        if prefix == "xml" { return XMLNamespace.xml }
        for scope in scopes.reversed() {
            for binding in scope.prefixes.reversed() where binding.prefix == prefix {
                return binding.uri
            }
        }
        throw XMLStreamError(.notWellFormed, "undeclared namespace prefix")
    }

    /// `<?xml version='1.x' [encoding='…'] [standalone='yes|no'] ?>`, strictly per XML 1.0 §2.8.
    /// The stream is UTF-8 whatever the declaration names (RFC 6120 §11.6).
    private func xmlDeclaration(_ p: UnsafeBufferPointer<UInt8>, from start: Int, to end: Int) throws {
        var i = start
        let malformed = XMLStreamError(.notWellFormed, "malformed XML declaration")
        func pseudoAttribute(_ expected: String) throws -> [UInt8]? {
            let save = i
            guard skipWhitespace(p, &i, end) else {
                i = save
                return nil
            }
            let nameStart = i
            while i < end, isNameChar(p[i]) { i += 1 }
            guard Array(p[nameStart..<i]) == Array(expected.utf8) else {
                i = save
                return nil
            }
            skipWhitespace(p, &i, end)
            guard i < end, p[i] == UInt8(ascii: "=") else { throw malformed }
            i += 1
            skipWhitespace(p, &i, end)
            guard i < end, p[i] == UInt8(ascii: "'") || p[i] == UInt8(ascii: "\"") else { throw malformed }
            let quote = p[i]
            guard let close = find(quote, in: p, from: i + 1), close < end else { throw malformed }
            let value = Array(p[(i + 1)..<close])
            i = close + 1
            return value
        }
        guard let version = try pseudoAttribute("version"), !version.isEmpty, version.allSatisfy({ $0 < 0x80 && isNameChar($0) }) else {
            throw malformed
        }
        if let encoding = try pseudoAttribute("encoding") {
            let isLetter: (UInt8) -> Bool = { ($0 | 0x20) >= UInt8(ascii: "a") && ($0 | 0x20) <= UInt8(ascii: "z") }
            guard let first = encoding.first, isLetter(first),
                encoding.allSatisfy({ isLetter($0) || ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") })
            else { throw malformed }
        }
        if let standalone = try pseudoAttribute("standalone") {
            guard standalone == Array("yes".utf8) || standalone == Array("no".utf8) else { throw malformed }
        }
        skipWhitespace(p, &i, end)
        guard i == end else { throw malformed }
    }

    // MARK: - Names, text, references

    /// Reads an XML name at `i` (ASCII name characters, or any non-ASCII UTF-8).
    private func name(_ p: UnsafeBufferPointer<UInt8>, _ i: inout Int, _ end: Int) throws -> String {
        guard let name = utf8String(UnsafeBufferPointer(rebasing: p[try nameRange(p, &i, end)])) else {
            throw XMLStreamError(.notWellFormed, "invalid UTF-8 in a name")
        }
        return name
    }

    /// The bytes of an XML name at `i`, which moves past it.
    private func nameRange(_ p: UnsafeBufferPointer<UInt8>, _ i: inout Int, _ end: Int) throws -> Range<Int> {
        let start = i
        guard i < end, isNameStart(p[i]) else { throw XMLStreamError(.notWellFormed, "invalid name") }
        i += 1
        while i < end, isNameChar(p[i]) { i += 1 }
        return start..<i
    }

    /// The bytes as a string, nil when they are not UTF-8. ASCII (nearly every name, value and
    /// text in XMPP) takes `String(decoding:as:)`, which cannot repair anything in ASCII:
    /// `String(validating:as:)` goes through generic code and cost three times as much
    /// (85 against 30 ns for a short string; a message has a dozen).
    @inline(__always)
    private func utf8String(_ bytes: UnsafeBufferPointer<UInt8>) -> String? {
        var bits: UInt8 = 0
        for byte in bytes { bits |= byte }
        return bits < 0x80 ? String(decoding: bytes, as: UTF8.self) : String(validating: bytes, as: UTF8.self)
    }

    private func appendText(_ p: UnsafeBufferPointer<UInt8>, from start: Int, to end: Int, decodeReferences: Bool) throws {
        var text: String
        if decodeReferences {
            text = try decode(p, from: start, to: end, attribute: false)
        } else {
            try check(p, from: start, to: end, allowCDATAEnd: true)
            text = try string(p, start, end)
            if text.utf8.contains(0x0D) { text = normalizeLineEnds(text) }
        }
        guard !text.isEmpty, !stack.isEmpty else { return }
        let last = stack.count - 1
        if case .text(let previous)? = stack[last].children.last {
            stack[last].children[stack[last].children.count - 1] = .text(previous + text)
        } else {
            stack[last].children.append(.text(text))
        }
    }

    /// Decodes character data or an attribute value: references, line ends, attribute-value
    /// whitespace normalisation; validates characters and UTF-8.
    ///
    /// One pass in document order, so the problem reported is the first one in the bytes however
    /// they were chunked: an invalid UTF-8 sequence before a bad reference or a forbidden
    /// character wins over it (two passes, checks first and UTF-8 last, made the error depend on
    /// where a chunk ended; found by ParserFuzzTests).
    private func decode(_ p: UnsafeBufferPointer<UInt8>, from start: Int, to end: Int, attribute: Bool) throws -> String {
        var bytes: [UInt8] = []  // the decoded form, once something needed changing
        var changed = false
        var copied = start  // p[start..<copied] is in `bytes`
        var k = start
        while k < end {
            let byte = p[k]
            if byte >= 0x20, byte != UInt8(ascii: "&"), byte != UInt8(ascii: "]"), byte != UInt8(ascii: "<"), byte != 0xEF {
                k += 1
                continue
            }
            switch byte {
            case UInt8(ascii: "&"), 0x0D, 0x09, 0x0A:
                if byte == 0x09 || byte == 0x0A, !attribute {
                    k += 1
                    continue
                }
                if !changed {
                    changed = true
                    bytes.reserveCapacity(end - start)
                }
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: p[copied..<k]))
                if byte == UInt8(ascii: "&") {
                    guard let semicolon = find(UInt8(ascii: ";"), in: p, from: k + 1), semicolon < end, semicolon - k <= 12 else {
                        throw firstInOrder(XMLStreamError(.notWellFormed, "unterminated reference"), p, start, k)
                    }
                    do {
                        try appendReference(p, from: k + 1, to: semicolon, into: &bytes)
                    } catch let error as XMLStreamError {
                        throw firstInOrder(error, p, start, k)
                    }
                    k = semicolon + 1
                } else if byte == 0x0D {
                    bytes.append(attribute ? 0x20 : 0x0A)
                    k += k + 1 < end && p[k + 1] == 0x0A ? 2 : 1
                } else {  // a tab or line feed in an attribute value
                    bytes.append(0x20)
                    k += 1
                }
                copied = k
            case UInt8(ascii: "<"):
                // A guard: the tag scan refuses '<' in an attribute value before any decoding (so
                // that refusal is not ordered after invalid UTF-8), and character data ends at one.
                throw firstInOrder(XMLStreamError(.notWellFormed, "'<' in an attribute value"), p, start, k)
            default:
                try checkCharacter(p, at: k, end: end, allowCDATAEnd: attribute, from: start)
                k += 1
            }
        }
        guard changed else { return try string(p, start, end) }
        bytes.append(contentsOf: UnsafeBufferPointer(rebasing: p[copied..<end]))
        guard let string = bytes.withUnsafeBufferPointer(utf8String) else {
            throw XMLStreamError(.notWellFormed, "invalid UTF-8")
        }
        return string
    }

    private func appendReference(_ p: UnsafeBufferPointer<UInt8>, from start: Int, to end: Int, into bytes: inout [UInt8]) throws {
        let reference = UnsafeBufferPointer(rebasing: p[start..<end])
        if reference.elementsEqual("lt".utf8) {
            bytes.append(UInt8(ascii: "<"))
        } else if reference.elementsEqual("gt".utf8) {
            bytes.append(UInt8(ascii: ">"))
        } else if reference.elementsEqual("amp".utf8) {
            bytes.append(UInt8(ascii: "&"))
        } else if reference.elementsEqual("quot".utf8) {
            bytes.append(UInt8(ascii: "\""))
        } else if reference.elementsEqual("apos".utf8) {
            bytes.append(UInt8(ascii: "'"))
        } else {
            guard reference.first == UInt8(ascii: "#"), reference.count >= 2 else {
                // A well-formed name is an entity XMPP forbids; anything else is broken syntax.
                guard let first = reference.first, isNameStart(first), reference.allSatisfy({ isNameChar($0) }) else {
                    throw XMLStreamError(.notWellFormed, "malformed reference")
                }
                throw XMLStreamError(.restrictedXML, "only the predefined entities may be referenced")
            }
            let hex = reference[1] == UInt8(ascii: "x")
            let digits = reference.dropFirst(hex ? 2 : 1)
            guard !digits.isEmpty, digits.count <= 8,
                let value = UInt32(String(decoding: digits, as: UTF8.self), radix: hex ? 16 : 10),
                let scalar = Unicode.Scalar(value), isXMLChar(value)
            else {
                throw XMLStreamError(.notWellFormed, "invalid character reference")
            }
            bytes.append(contentsOf: String(Character(scalar)).utf8)
        }
    }

    /// Rejects control characters XML forbids, U+FFFE/U+FFFF and (outside CDATA) "]]>"; the first
    /// problem in document order, invalid UTF-8 included.
    private func check(_ p: UnsafeBufferPointer<UInt8>, from start: Int, to end: Int, allowCDATAEnd: Bool) throws {
        for k in start..<end {
            let byte = p[k]
            if byte < 0x20 || byte == UInt8(ascii: "]") || byte == 0xEF {
                try checkCharacter(p, at: k, end: end, allowCDATAEnd: allowCDATAEnd, from: start)
            }
        }
    }

    /// The check of `check(_:from:to:allowCDATAEnd:)` for the byte at `k`.
    @inline(__always)
    private func checkCharacter(_ p: UnsafeBufferPointer<UInt8>, at k: Int, end: Int, allowCDATAEnd: Bool, from start: Int) throws {
        let byte = p[k]
        if byte < 0x20 && byte != 0x09 && byte != 0x0A && byte != 0x0D {
            throw firstInOrder(XMLStreamError(.notWellFormed, "forbidden control character"), p, start, k)
        }
        if byte == 0xEF, k + 2 < end, p[k + 1] == 0xBF, p[k + 2] == 0xBE || p[k + 2] == 0xBF {
            throw firstInOrder(XMLStreamError(.notWellFormed, "forbidden character U+FFFE/U+FFFF"), p, start, k)
        }
        if !allowCDATAEnd, byte == UInt8(ascii: "]"), k + 2 < end, p[k + 1] == UInt8(ascii: "]"), p[k + 2] == UInt8(ascii: ">") {
            throw firstInOrder(XMLStreamError(.notWellFormed, "']]>' in character data"), p, start, k)
        }
    }

    /// `error`, found at `k`, unless the bytes before it are not UTF-8: then that came first.
    private func firstInOrder(_ error: XMLStreamError, _ p: UnsafeBufferPointer<UInt8>, _ start: Int, _ k: Int) -> XMLStreamError {
        utf8String(UnsafeBufferPointer(rebasing: p[start..<k])) == nil ? XMLStreamError(.notWellFormed, "invalid UTF-8") : error
    }

    private func string(_ p: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) throws -> String {
        guard let string = utf8String(UnsafeBufferPointer(rebasing: p[start..<end])) else {
            throw XMLStreamError(.notWellFormed, "invalid UTF-8")
        }
        return string
    }

    private func normalizeLineEnds(_ text: String) -> String {
        text.replacingCRLF()
    }

    private func isXMLChar(_ value: UInt32) -> Bool {
        value == 0x09 || value == 0x0A || value == 0x0D || (0x20...0xD7FF).contains(value)
            || (0xE000...0xFFFD).contains(value) || (0x10000...0x10FFFF).contains(value)
    }

    @inline(__always) private func isWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }

    @inline(__always) private func isNameStart(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
            || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ":") || byte >= 0xC0
    }

    @inline(__always) private func isNameChar(_ byte: UInt8) -> Bool {
        isNameStart(byte) || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "-")
            || byte == UInt8(ascii: ".") || byte >= 0x80
    }

    @discardableResult
    private func skipWhitespace(_ p: UnsafeBufferPointer<UInt8>, _ i: inout Int, _ end: Int) -> Bool {
        let start = i
        while i < end, isWhitespace(p[i]) { i += 1 }
        return i > start
    }

    private func find(_ byte: UInt8, in p: UnsafeBufferPointer<UInt8>, from start: Int) -> Int? {
        var k = start
        while k < p.count {
            if p[k] == byte { return k }
            k += 1
        }
        return nil
    }

    private func findSequence(_ p: UnsafeBufferPointer<UInt8>, from start: Int, _ a: UInt8, _ b: UInt8, _ c: UInt8? = nil) -> Int? {
        var k = start
        let needed = c == nil ? 2 : 3
        while k + needed <= p.count {
            if p[k] == a, p[k + 1] == b, c == nil || p[k + 2] == c { return k }
            k += 1
        }
        return nil
    }
}

extension String {
    /// XML end-of-line handling: CR LF and lone CR become LF.
    fileprivate func replacingCRLF() -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(utf8.count)
        var previousCR = false
        for byte in utf8 {
            if byte == 0x0D {
                bytes.append(0x0A)
                previousCR = true
                continue
            }
            if byte == 0x0A && previousCR {
                previousCR = false
                continue
            }
            previousCR = false
            bytes.append(byte)
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
