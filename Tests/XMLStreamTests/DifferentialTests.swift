import FuzzSupport
import NIOCore
import Testing

@testable import XMLStream

/// Our parser against libexpat on the same input: both must accept or both refuse, and when
/// both accept, report the same events — whole, and split into random chunks.
@Suite struct DifferentialTests {
    static let header =
        "<?xml version='1.0' encoding='UTF-8'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0' xml:lang='en'>"

    static let valid: [String] = [
        header + "<message to='a@b' type='chat' id='1'><body>hello &amp; &lt;world&gt; &#x4F60;&#22909;</body></message>",
        header + "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>x y</resource></bind></iq>",
        header + "<p:x xmlns:p='urn:p' p:a='1' b=\"2\"><p:y><z xmlns='urn:z'/></p:y></p:x>",
        header + "<message><body><![CDATA[<not> & markup ]] > ]]></body></message>  \n ",
        header + "<message><body>line1\r\nline2\rline3\n</body></message>",
        header + "<presence a='x\ty\nz\r\nw'/><presence/>",
        header + "<message><body>张伟 👍 ¿qué? \u{1F600}</body><thread>t</thread></message>",
        header + "<a xml:lang='zh' xmlns:q='urn:q'><q:b q:c='&quot;&apos;'>t<c/>u</q:b></a>",
        header + "<message><body>a]b]]c</body></message></stream:stream>",
        "\u{FEFF}<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client'><a/></stream:stream>",
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client'  ><a\n b = 'c' /></stream:stream >",
    ]

    static let invalid: [String] = [
        header + "<a></b>",
        header + "<a b='1' b='2'/>",
        header + "<a b='1'c='2'/>",
        header + "<a b=1/>",
        header + "<a b='<'/>",
        header + "<p:a/>",
        header + "<a p:b='1'/>",
        header + "<a>&nbsp;</a>",
        header + "<a>&#0;</a>",
        header + "<a>&#xD800;</a>",
        header + "<a>]]></a>",
        header + "<a>\u{01}</a>",
        header + "<!-- c -->",
        header + "<?pi x?>",
        header + "<!DOCTYPE a>",
        header + "<1a/>",
        header + "< a/>",
        header + "<a/ >",
        header + "<a xmlns:p=''/>",
        header + "<a xmlns:xmlns='u'/>",
        header + "text",
        "  <?xml version='1.0'?><a/>",
    ]

    /// The string the serialiser makes — in one pass through a stack page, or in two (count,
    /// then write into the string) — is byte for byte what it writes to the wire, for every element of the valid inputs (escapes,
    /// prefixes, CDATA, non-ASCII, the stream namespace) and for a large one.
    @Test func exactStringsAreTheWireBytes() throws {
        var elements: [XMLElement] = []
        for input in Self.valid {
            let parser = XMLStreamParser(limits: XMLStreamLimits(maxStanzaBytes: 1 << 24, maxDepth: 1000))
            try Array(input.utf8).withUnsafeBytes { raw in
                try parser.feed(raw) { event in
                    switch event {
                    case .streamOpened(let root): elements.append(root)
                    case .element(let element): elements.append(element)
                    case .streamClosed: break
                    }
                }
            }
        }
        elements.append(XMLElement("body", xmlns: "jabber:client").withText(String(repeating: "长文本 <&> \"'\r\t ", count: 20_000)))
        elements.append(XMLElement("e", xmlns: "", ["a": "\t\n\r\"'<>&"]))
        #expect(elements.count > Self.valid.count)
        for element in elements {
            for namespace in ["", "jabber:client"] {
                var buffer = ByteBuffer()
                XMLSerializer.write(element, into: &buffer, defaultNamespace: namespace, streamPrefixDeclared: false)
                let exact = XMLSerializer.exactString(element, defaultNamespace: namespace)
                #expect(exact.map { Array($0.utf8) } == Array(buffer.readableBytesView), "\(String(buffer: buffer))")
                // The usual way: one pass into a stack page (two passes past it).
                #expect(Array(XMLSerializer.string(element, defaultNamespace: namespace).utf8) == Array(buffer.readableBytesView))
            }
        }
    }

    private func ours(_ chunks: [[UInt8]]) -> (events: [String], failed: Bool) {
        let parser = XMLStreamParser(limits: XMLStreamLimits(maxStanzaBytes: 1 << 24, maxDepth: 1000))
        var events: [String] = []
        do {
            for chunk in chunks {
                try chunk.withUnsafeBytes { bytes in
                    try parser.feed(bytes) { events.append(Self.describe($0)) }
                }
            }
            return (events, false)
        } catch {
            return (events, true)
        }
    }

    private func expat(_ bytes: [UInt8]) -> (events: [String], failed: Bool) {
        let parser = ExpatStreamParser(limits: XMLStreamLimits(maxStanzaBytes: 1 << 24, maxDepth: 1000))
        var events: [String] = []
        do {
            try bytes.withUnsafeBytes { raw in
                try parser.feed(raw) { events.append(Self.describe($0)) }
            }
            return (events, false)
        } catch {
            return (events, true)
        }
    }

    static func describe(_ event: XMLStreamEvent) -> String {
        switch event {
        case .streamOpened(let root): return "open " + XMLSerializer.string(root)
        case .element(let element): return "element " + XMLSerializer.string(element)
        case .streamClosed: return "close"
        }
    }

    @Test(arguments: valid)
    func validDocumentsAgree(document: String) {
        let bytes = Array(document.utf8)
        let reference = expat(bytes)
        #expect(!reference.failed, "expat refused: \(document)")
        #expect(ours([bytes]).events == reference.events)
        #expect(!ours([bytes]).failed)
        let oneByOne = ours(bytes.map { [$0] })
        #expect(oneByOne.events == reference.events)
        #expect(!oneByOne.failed)
    }

    @Test(arguments: invalid)
    func invalidDocumentsAreRefusedByBoth(document: String) {
        let bytes = Array(document.utf8)
        #expect(expat(bytes).failed, "expat accepted: \(document)")
        #expect(ours([bytes]).failed, "we accepted: \(document)")
        #expect(ours(bytes.map { [$0] }).failed, "we accepted byte by byte: \(document)")
    }

    /// Seeded random mutations of valid streams (bounded: a few thousand cases, well under a second).
    @Test func randomMutationsAgree() {
        var random = SplitMix64(seed: 0x5EED_2026)
        let specials = Array("<>&;'\"/=!?[]:# \r\nx".utf8) + [0x00, 0x80, 0xC3, 0xE4, 0xFF]
        var disagreements: [String] = []
        for _ in 0..<6000 {
            var bytes = Array(Self.valid[Int(random.next() % UInt64(Self.valid.count))].utf8)
            for _ in 0...(random.next() % 3) {
                let position = Int(random.next() % UInt64(bytes.count))
                switch random.next() % 3 {
                case 0: bytes.remove(at: position)
                case 1: bytes.insert(specials[Int(random.next() % UInt64(specials.count))], at: position)
                default: bytes[position] = specials[Int(random.next() % UInt64(specials.count))]
                }
            }
            let reference = expat(bytes)
            var chunks: [[UInt8]] = []
            var index = 0
            while index < bytes.count {
                let length = 1 + Int(random.next() % 40)
                chunks.append(Array(bytes[index..<min(bytes.count, index + length)]))
                index += length
            }
            let whole = ours([bytes])
            let split = ours(chunks)
            // Incremental parsers may wait for more bytes where expat has already failed (or the
            // reverse), so only decided differences count: whole vs split feeding must agree;
            // when both accept, one event list must be a prefix of the other; a document one
            // parser accepts to its final close, the other must not refuse.
            func isPrefix(_ a: [String], _ b: [String]) -> Bool { a.count <= b.count && Array(b.prefix(a.count)) == a }
            let inconsistent = whole.failed != split.failed || (!whole.failed && whole.events != split.events)
            let bothAccept = !whole.failed && !reference.failed
            let eventsDiffer = bothAccept && !isPrefix(whole.events, reference.events) && !isPrefix(reference.events, whole.events)
            let weAcceptWhatExpatRefuses = !whole.failed && reference.failed && whole.events.last == "close"
            let weRefuseWhatExpatAccepts = whole.failed && !reference.failed && reference.events.last == "close"
            if inconsistent || eventsDiffer || weAcceptWhatExpatRefuses || weRefuseWhatExpatAccepts {
                disagreements.append("ours=\(whole.failed ? "fail" : "ok") split=\(split.failed ? "fail" : "ok") expat=\(reference.failed ? "fail" : "ok") ours.events=\(whole.events.count) expat.events=\(reference.events.count) :: " + String(decoding: bytes, as: UTF8.self).debugDescription)
            }
        }
        #expect(disagreements.isEmpty, "\(disagreements.count) disagreements:\n\(disagreements.prefix(12).joined(separator: "\n"))")
    }
}

