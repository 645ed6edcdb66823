import NIOCore
import Testing

@testable import XMLStream

private func parse(
    _ chunks: [String],
    limits: XMLStreamLimits = XMLStreamLimits(),
    framing: XMLStreamParser.Framing = .stream
) throws -> [XMLStreamEvent] {
    let parser = XMLStreamParser(limits: limits, framing: framing)
    var events: [XMLStreamEvent] = []
    for chunk in chunks {
        try parser.feed(ByteBuffer(string: chunk)) { events.append($0) }
    }
    return events
}

private let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>"

@Suite struct XMLStreamParserTests {
    @Test func streamOpenElementsAndClose() throws {
        let events = try parse([header, "<message to='a@b' type='chat'><body>hi &amp; &lt;3</body></message> ", "</stream:stream>"])
        #expect(events.count == 3)
        guard case .streamOpened(let root) = events[0] else { Issue.record("no open"); return }
        #expect(root.name == "stream")
        #expect(root.namespace == XMLNamespace.streams)
        #expect(root[attribute: "to"] == "example.test")
        guard case .element(let message) = events[1] else { Issue.record("no element"); return }
        #expect(message.name == "message")
        #expect(message.namespace == "jabber:client")
        #expect(message.child("body")?.text == "hi & <3")
        guard case .streamClosed = events[2] else { Issue.record("no close"); return }
    }

    @Test func byteByByteGivesSameResult() throws {
        let document = header + "<iq type='get' id='1'><query xmlns='jabber:iq:roster' ver=''/></iq><message><body>张伟 你好</body></message>"
        var chunks: [String] = []
        for scalar in document.unicodeScalars { chunks.append(String(scalar)) }
        let whole = try parse([document])
        let split = try parse(chunks)
        #expect(whole.count == 3)
        #expect(split.count == 3)
        if case .element(let a) = whole[2], case .element(let b) = split[2] {
            #expect(a == b)
            #expect(a.child("body")?.text == "张伟 你好")
        } else {
            Issue.record("missing elements")
        }
        if case .element(let iq) = split[1] {
            #expect(iq.child("query", namespace: "jabber:iq:roster") != nil)
        }
    }

    @Test func prefixedNamespacesAndXmlLang() throws {
        let events = try parse([header, "<x:foo xmlns:x='urn:x' xml:lang='zh'><x:bar/></x:foo>"])
        guard case .element(let foo) = events[1] else { Issue.record(); return }
        #expect(foo.namespace == "urn:x")
        #expect(foo.language == "zh")
        #expect(foo.child("bar", namespace: "urn:x") != nil)
    }

    @Test func malformedXMLIsNotWellFormed() {
        #expect(throws: XMLStreamError.self) { try parse([header, "<message><body></message>"]) }
        do {
            _ = try parse([header, "<a></b>"])
        } catch let error as XMLStreamError {
            #expect(error.condition == .notWellFormed)
        } catch { Issue.record("wrong error") }
    }

    @Test func doctypeAndBillionLaughsAreRestricted() throws {
        let laughs = """
            <?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>&lol2;
            """
        do {
            _ = try parse([laughs])
            Issue.record("accepted a DOCTYPE")
        } catch let error as XMLStreamError {
            #expect(error.condition == .restrictedXML)
        }
    }

    @Test func doctypeInsideTheStreamIsRestricted() {
        do {
            _ = try parse([header, "<!DOCTYPE x [<!ENTITY a 'b'>]><message/>"])
            Issue.record("accepted")
        } catch let error as XMLStreamError {
            #expect(error.condition == .restrictedXML)
        } catch { Issue.record("wrong error") }
    }

    @Test func commentsAndProcessingInstructionsAreRestricted() {
        for bad in ["<!-- hi -->", "<?php echo 1 ?>"] {
            do {
                _ = try parse([header, bad])
                Issue.record("accepted \(bad)")
            } catch let error as XMLStreamError {
                #expect(error.condition == .restrictedXML)
            } catch { Issue.record("wrong error") }
        }
    }

    @Test func oversizedStanzaIsPolicyViolation() {
        let big = "<message><body>" + String(repeating: "x", count: 5000) + "</body></message>"
        do {
            _ = try parse([header, big], limits: XMLStreamLimits(maxStanzaBytes: 4096))
            Issue.record("accepted oversized")
        } catch let error as XMLStreamError {
            #expect(error.condition == .policyViolation)
        } catch { Issue.record("wrong error") }
        // Many small stanzas adding up to more than the limit are fine.
        let small = "<message><body>" + String(repeating: "x", count: 1000) + "</body></message>"
        #expect(throws: Never.self) {
            _ = try parse([header] + Array(repeating: small, count: 20), limits: XMLStreamLimits(maxStanzaBytes: 4096))
        }
    }

    @Test func hugeUnterminatedAttributeIsPolicyViolation() {
        var chunks = [header, "<message to='"]
        chunks += Array(repeating: String(repeating: "a", count: 1000), count: 10)
        do {
            _ = try parse(chunks, limits: XMLStreamLimits(maxStanzaBytes: 4096))
            Issue.record("accepted")
        } catch let error as XMLStreamError {
            #expect(error.condition == .policyViolation)
        } catch { Issue.record("wrong error") }
    }

    @Test func deepNestingIsPolicyViolation() {
        let deep = String(repeating: "<a>", count: 100)
        do {
            _ = try parse([header, deep], limits: XMLStreamLimits(maxDepth: 16))
            Issue.record("accepted")
        } catch let error as XMLStreamError {
            #expect(error.condition == .policyViolation)
        } catch { Issue.record("wrong error") }
    }

    @Test func invalidUTF8IsRejected() {
        let parser = XMLStreamParser()
        var buffer = ByteBuffer(string: header + "<message><body>")
        buffer.writeBytes([0xC3, 0x28, 0xFF])
        buffer.writeString("</body></message>")
        #expect(throws: XMLStreamError.self) { try parser.feed(buffer) { _ in } }
    }

    @Test func textAtStreamLevelIsBadFormat() {
        do {
            _ = try parse([header, "hello"])
            Issue.record("accepted")
        } catch let error as XMLStreamError {
            #expect(error.condition == .badFormat)
        } catch { Issue.record("wrong error") }
        #expect(throws: Never.self) { _ = try parse([header, "  \n "]) }
    }

    @Test func framedModeReportsEachElement() throws {
        let events = try parse(
            [
                "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.test' version='1.0'/>",
                "<message xmlns='jabber:client'><body>hi</body></message>",
                "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
            ],
            framing: .framed
        )
        #expect(events.count == 3)
        if case .element(let open) = events[0] {
            #expect(open.name == "open")
            #expect(open.namespace == XMLNamespace.framing)
        } else { Issue.record() }
    }

    @Test func serializerRoundTrips() throws {
        var message = XMLElement("message", xmlns: "jabber:client", ["to": "a@b", "type": "chat"])
        message.append(XMLElement("body", xmlns: "jabber:client").withText("<&> \"quoted\" 你好"))
        message.append(XMLElement("x", xmlns: "urn:x", ["k": "'v'"]))
        var buffer = ByteBuffer()
        XMLSerializer.write(message, into: &buffer, defaultNamespace: "jabber:client")
        let text = String(buffer: buffer)
        #expect(text.hasPrefix("<message to=\"a@b\" type=\"chat\"><body>&lt;&amp;&gt;"))
        let events = try parse([header, text])
        guard case .element(let parsed) = events[1] else { Issue.record(); return }
        #expect(parsed == message)
        let features = XMLElement("features", xmlns: XMLNamespace.streams, [:], children: [XMLElement("starttls", xmlns: "urn:ietf:params:xml:ns:xmpp-tls")])
        #expect(XMLSerializer.string(features, defaultNamespace: "jabber:client")
            == "<stream:features xmlns:stream=\"http://etherx.jabber.org/streams\"><starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"/></stream:features>")
    }

    /// `moveEach` hands every element over in order, moved: the array is left empty and each
    /// element's storage is referenced only by whoever took it.
    @Test func moveEachHandsElementsOverWithoutCopies() {
        final class Box { let number: Int; init(_ number: Int) { self.number = number } }
        var boxes = (0..<5).map { Box($0) }
        let placeholder = Box(-1)
        var taken: [Box] = []
        boxes.moveEach(leaving: placeholder) { taken.append($0) }
        #expect(boxes.isEmpty)
        #expect(taken.map(\.number) == [0, 1, 2, 3, 4])
        for index in taken.indices { #expect(isKnownUniquelyReferenced(&taken[index])) }
    }
}

