import FuzzSupport
import Foundation
import NIOCore
import Testing

@testable import XMLStream

/// Seeded random input for the stream parser, bounded in time so it runs in CI: random bytes,
/// mutated stanzas (specials, splices, repeats), deep nesting and huge tokens, each fed in random
/// chunks. The parser must never crash, only ever throw `XMLStreamError`, hold no more than
/// its limits allow, and give the same verdict whole or chunked.
///
/// `SWITCHBOARD_FUZZ_SECONDS` (default 2 per test) runs longer; `SWITCHBOARD_FUZZ_SEED` replays
/// a run (the seed is printed at the start and in every failure).
@Suite struct ParserFuzzTests {
    static let limits = XMLStreamLimits(maxStanzaBytes: 4096, maxDepth: 16)

    static let corpus: [String] = DifferentialTests.valid + DifferentialTests.invalid + [
        DifferentialTests.header + "<iq type='set' id='a1'><query xmlns='jabber:iq:roster'><item jid='b@c' name='B'><group>G</group></item></query></iq>",
        DifferentialTests.header + "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>biwsbj11c2VyLHI9ZnlrbytkMmxiYkZnT05Sdjlxa3hkYXdM</auth>",
        DifferentialTests.header + "<enable xmlns='urn:xmpp:sm:3' resume='true'/><r xmlns='urn:xmpp:sm:3'/><a xmlns='urn:xmpp:sm:3' h='4'/>",
        "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.test' version='1.0'/>",
    ]

    static let specials = Array("<>&;'\"/=!?[]:#- \r\n\txmlns".utf8) + [0x00, 0x80, 0xBF, 0xC0, 0xC3, 0xE4, 0xED, 0xEF, 0xF0, 0xF4, 0xF8, 0xFF]
    static let fragments = [
        "<a>", "</a>", "<a/>", "&amp;", "&#x10FFFF;", "&#xD800;", "&lol;", "<![CDATA[", "]]>", "<!DOCTYPE x [<!ENTITY lol 'lol'>]>",
        "<!--", "-->", "<?xml version='1.0'?>", "xmlns:p='u'", " p:q='1'", "</stream:stream>", "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
        "\u{FEFF}", "\u{10FFFF}", "\u{1F600}", "\\xED\\xA0\\x80",
    ].map { Array($0.utf8) }

    private func input(_ random: inout SplitMix64) -> [UInt8] {
        switch random.next() % 6 {
        case 0:  // random bytes
            return (0..<Int(random.next() % 600)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        case 1:  // random bytes after a valid stream header
            return Array(DifferentialTests.header.utf8) + (0..<Int(random.next() % 600)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        case 2:  // deep nesting, sometimes past the limit
            let depth = Int(random.next() % 40)
            let open = String(repeating: "<d>", count: depth), close = String(repeating: "</d>", count: depth)
            return Array((DifferentialTests.header + "<message>" + open + "x" + close + "</message>").utf8)
        case 3:  // one huge token: text, attribute, name or CDATA around the size limit
            let size = 3000 + Int(random.next() % 3000)
            let filler = String(repeating: "A", count: size)
            let shapes = ["<message><body>\(filler)</body></message>", "<message a='\(filler)'/>", "<m\(filler)/>", "<m><![CDATA[\(filler)]]></m>", "<m>\(filler)"]
            return Array((DifferentialTests.header + shapes[Int(random.next() % UInt64(shapes.count))]).utf8)
        default:  // mutated corpus entry
            var bytes = Array(Self.corpus[Int(random.next() % UInt64(Self.corpus.count))].utf8)
            for _ in 0...(random.next() % 6) {
                let position = bytes.isEmpty ? 0 : Int(random.next() % UInt64(bytes.count))
                switch random.next() % 6 {
                case 0: if !bytes.isEmpty { bytes.remove(at: position) }
                case 1: bytes.insert(Self.specials[Int(random.next() % UInt64(Self.specials.count))], at: position)
                case 2: if !bytes.isEmpty { bytes[position] = Self.specials[Int(random.next() % UInt64(Self.specials.count))] }
                case 3: bytes.insert(contentsOf: Self.fragments[Int(random.next() % UInt64(Self.fragments.count))], at: position)
                case 4:  // repeat a slice
                    let length = min(bytes.count - position, Int(random.next() % 64))
                    let slice = bytes[position..<(position + length)]
                    for _ in 0..<(random.next() % 8) { bytes.insert(contentsOf: slice, at: position) }
                default: bytes = Array(bytes.prefix(position))  // truncate
                }
            }
            return bytes
        }
    }

    private struct Verdict: Equatable {
        var events: [String]
        var error: XMLStreamError?
    }

    /// Feeds `chunks`; records a problem if anything but an XMLStreamError is thrown or the parser holds too much.
    private func run(_ chunks: [[UInt8]], framing: XMLStreamParser.Framing, problem: (String) -> Void) -> Verdict {
        let parser = XMLStreamParser(limits: Self.limits, framing: framing)
        var events: [String] = []
        for chunk in chunks {
            do {
                try chunk.withUnsafeBytes { bytes in
                    try parser.feed(bytes) { events.append(DifferentialTests.describe($0)) }
                }
            } catch let error as XMLStreamError {
                return Verdict(events: events, error: error)
            } catch {
                problem("untyped error \(type(of: error)): \(error)")
                return Verdict(events: events, error: nil)
            }
            // An incomplete token is at most one stanza plus one 16 KiB slice (capacity may double).
            if parser.retainedBytes > 2 * (Self.limits.maxStanzaBytes + 16_384) {
                problem("parser retains \(parser.retainedBytes) bytes")
            }
            if parser.openDepth > Self.limits.maxDepth { problem("depth \(parser.openDepth) past the limit") }
        }
        return Verdict(events: events, error: nil)
    }

    @Test func randomInputNeverCrashesAndFailsTyped() {
        let budget = FuzzBudget(name: "XMLStreamParser")
        var random = SplitMix64(seed: budget.seed)
        var problems: [String] = []
        var cases = 0
        while budget.goOn(cases), problems.count < 10 {
            cases += 1
            let bytes = input(&random)
            var chunks: [[UInt8]] = []
            var index = 0
            while index < bytes.count {
                let length = 1 + Int(random.next() % (random.next() % 4 == 0 ? 3 : 200))
                chunks.append(Array(bytes[index..<min(bytes.count, index + length)]))
                index += length
            }
            let framing: XMLStreamParser.Framing = random.next() % 5 == 0 ? .framed : .stream
            func report(_ what: String) {
                problems.append("seed \(budget.seed) case \(cases): \(what) :: \(String(decoding: bytes.prefix(300), as: UTF8.self).debugDescription)")
            }
            let whole = run([bytes], framing: framing, problem: report)
            let split = run(chunks, framing: framing, problem: report)
            // Chunking must not change the verdict: refused or not, the events when both accept, and
            // the condition (except that a size limit may be noticed before a later syntax error).
            let conditionsDiffer =
                whole.error?.condition != split.error?.condition && whole.error?.condition != .policyViolation
                && split.error?.condition != .policyViolation
            if (whole.error == nil) != (split.error == nil) || conditionsDiffer || (whole.error == nil && whole.events != split.events) {
                report("whole \(whole.error.map(\.description) ?? "ok") vs chunked \(split.error.map(\.description) ?? "ok")")
            }
        }
        budget.finish(cases)
        #expect(problems.isEmpty, "\(problems.count) problems:\n\(problems.joined(separator: "\n"))")
    }

    /// Two problems in one run of character data (or one attribute value): the first in document
    /// order is reported, fed whole or cut at every possible point. Found by the fuzzer: with the
    /// UTF-8 check done after references, the whole document reported the later bad reference.
    @Test(arguments: [
        ("<m>hel\u{FFFD}o &lt;world&x; </m>", "not-well-formed: invalid UTF-8"),
        ("<m>hello &x; hel\u{FFFD}o</m>", "restricted-xml: only the predefined entities may be referenced"),
        ("<m>hel\u{FFFD}o \u{01}</m>", "not-well-formed: invalid UTF-8"),
        ("<m>a\u{01} &x; \u{FFFD}</m>", "not-well-formed: forbidden control character"),
        ("<m>a &x; \u{01}</m>", "restricted-xml: only the predefined entities may be referenced"),
        ("<m>a ]]> &x;</m>", "not-well-formed: ']]>' in character data"),
        ("<m>a&#0; \u{01}</m>", "not-well-formed: invalid character reference"),
        ("<m a='\u{FFFD}&x;'/>", "not-well-formed: invalid UTF-8"),
        ("<m a='&x;\u{FFFD}'/>", "restricted-xml: only the predefined entities may be referenced"),
        ("<m a='x\r\n\t\u{FFFD}&x;'/>", "not-well-formed: invalid UTF-8"),
        ("<m a='\u{FFFD}<'/>", "not-well-formed: '<' in an attribute value"),  // seen by the tag scan, before any decoding
    ])
    func theFirstProblemIsReportedWhereverTheChunksEnd(stanza: String, expected: String) {
        // U+FFFD in the source stands for a lone continuation byte (invalid UTF-8).
        var bytes: [UInt8] = []
        for byte in Array((DifferentialTests.header + stanza).utf8) {
            if bytes.count >= 2, bytes.suffix(2) == [0xEF, 0xBF], byte == 0xBD {
                bytes.removeLast(2)
                bytes.append(0xBF)
            } else {
                bytes.append(byte)
            }
        }
        for cut in [bytes.count] + Array(DifferentialTests.header.utf8.count..<bytes.count) {
            var chunks = [Array(bytes[..<cut])]
            if cut < bytes.count { chunks.append(Array(bytes[cut...])) }
            let verdict = run(chunks, framing: .stream) { Issue.record("\($0)") }
            #expect(verdict.error?.description == expected, "cut at \(cut)")
        }
        // And a byte at a time: every hold-back (a reference, a split sequence, ']', CR) at once.
        let verdict = run(bytes.map { [$0] }, framing: .stream) { Issue.record("\($0)") }
        #expect(verdict.error?.description == expected, "byte by byte")
    }

    /// Byte-by-byte feeding of the big-token shapes: the limit must hold however the bytes arrive.
    @Test func hugeTokensAreRefusedAtTheLimit() {
        let filler = String(repeating: "B", count: 70_000)
        for shape in ["<m><body>\(filler)</body></m>", "<m a='\(filler)'/>", "<m\(filler)/>", "<m><![CDATA[\(filler)]]></m>", "<m>" + String(repeating: "<d/>", count: 20_000)] {
            let parser = XMLStreamParser(limits: Self.limits)
            var refused: XMLStreamError?
            var maxRetained = 0
            let bytes = Array((DifferentialTests.header + shape).utf8)
            var index = 0
            while index < bytes.count, refused == nil {
                let end = min(bytes.count, index + 97)
                do {
                    try bytes[index..<end].withUnsafeBytes { try parser.feed($0) { _ in } }
                } catch let error as XMLStreamError {
                    refused = error
                } catch {
                    Issue.record("untyped error \(error)")
                    return
                }
                maxRetained = max(maxRetained, parser.retainedBytes)
                index = end
            }
            #expect(refused?.condition == .policyViolation, "\(shape.prefix(20)): \(String(describing: refused))")
            #expect(index <= Self.limits.maxStanzaBytes + 1024, "refused only after \(index) bytes")
            #expect(maxRetained <= 2 * (Self.limits.maxStanzaBytes + 1024), "retained \(maxRetained) bytes")  // array capacity grows by doubling
        }
    }
}

