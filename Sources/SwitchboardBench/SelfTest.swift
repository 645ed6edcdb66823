import ArgumentParser
import NIOCore

/// `switchboard-bench selftest`: checks the stanza framer and the fast message scan without a
/// server (every split point of sample streams, both framings). Hidden from the help.
struct SelfTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest", abstract: "Check the framer and fast scanner (no server needed).", shouldDisplay: false)

    func run() throws {
        var failures = 0
        func check(_ condition: Bool, _ message: @autoclosure () -> String) {
            if !condition {
                failures += 1
                progress("FAIL: \(message())")
            }
        }

        let stream = """
            <?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='x' \
            from='d' version='1.0'><stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
            <mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features> \n\
            <message from="a@d/r" to='b@d/r' id="sbm12345" type='chat'><body>a &lt; b &gt; c "q" '&apos;' <![CDATA[<x>]]></body></message>\
            <presence a='>' b="/>"/><iq type='result' id='1'/>\
            <message type="error" id="sbm7"><error/></message></stream:stream>
            """
        let expectedStream: [String] = [
            "open",
            "<stream:features>",
            "<message from=\"a@d/r\"",
            "<presence a='>'",
            "<iq type='result'",
            "<message type=\"error\"",
            "close",
        ]
        let bytes = Array(stream.utf8)
        for split in 0...bytes.count {
            let events = frame(bytes, split: split, mode: .stream)
            check(events.count == expectedStream.count, "stream split \(split): \(events)")
            for (event, expected) in zip(events, expectedStream) {
                check(event.hasPrefix(expected), "stream split \(split): \(event) does not start with \(expected)")
            }
        }

        let framed = """
            <open xmlns="urn:ietf:params:xml:ns:xmpp-framing" version="1.0"/><stream:features \
            xmlns:stream="http://etherx.jabber.org/streams"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/>\
            </stream:features><message xmlns="jabber:client" id="sbm42"><body>hi</body></message>\
            <close xmlns="urn:ietf:params:xml:ns:xmpp-framing"/>
            """
        let framedBytes = Array(framed.utf8)
        for split in 0...framedBytes.count {
            let events = frame(framedBytes, split: split, mode: .framed)
            check(events.count == 4, "framed split \(split): \(events)")
        }

        var message = ByteBuffer(string: "<message from=\"a@d/r\" to='b@d/r' id=\"sbm12345\" type='chat'><body/></message>")
        let scan = FastScan.idNumberAndType(message, idPrefix: "sbm")
        check(scan.id == 12345 && !scan.isError, "fast scan: \(scan)")
        check(FastScan.isElement(message, named: "message"), "isElement message")
        message = ByteBuffer(string: "<message type=\"error\" xml:id='z' msgid='sbm1' id='sbm99'/>")
        let errorScan = FastScan.idNumberAndType(message, idPrefix: "sbm")
        check(errorScan.id == 99 && errorScan.isError, "fast scan error: \(errorScan)")
        check(!FastScan.isElement(ByteBuffer(string: "<messages/>"), named: "message"), "isElement messages")
        check(FastScan.idNumberAndType(ByteBuffer(string: "<message id='other'/>"), idPrefix: "sbm").id == nil, "foreign id")

        if failures > 0 {
            progress("\(failures) checks failed")
            throw ExitCode(1)
        }
        progress("selftest passed")
    }

    private func frame(_ bytes: [UInt8], split: Int, mode: StanzaFramer.Mode) -> [String] {
        var framer = StanzaFramer(mode: mode)
        var events: [String] = []
        for part in [bytes[0..<split], bytes[split...]] {
            var buffer = ByteBuffer(bytes: part)
            framer.append(&buffer)
            while true {
                guard let event = try? framer.next() else { break }
                switch event {
                case .streamOpened: events.append("open")
                case .streamClosed: events.append("close")
                case .element(let element): events.append(String(buffer: element))
                }
            }
        }
        return events
    }
}
