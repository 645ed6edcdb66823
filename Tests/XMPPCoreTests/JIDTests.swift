import Foundation
import Testing
@testable import XMPPCore

/// Byte-exact comparison (Swift's String == uses canonical equivalence).
private func bytes(_ string: String?) -> [UInt8]? {
    string.map { Array($0.utf8) }
}

private func expectJIDError(_ expected: JIDError, _ input: String, sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        let jid = try JID(input)
        Issue.record("expected \(expected) for \"\(input)\", got \(jid)", sourceLocation: sourceLocation)
    } catch {
        #expect(error == expected, "\"\(input)\"", sourceLocation: sourceLocation)
    }
}

@Suite("JID")
struct JIDTests {
    // MARK: RFC 7622 §3.5 Table 1

    struct Valid: Sendable, CustomTestStringConvertible {
        var input: String
        var local: String?
        var domain: String
        var resource: String?
        var testDescription: String { input }
    }

    static let rfcValid: [Valid] = [
        Valid(input: "juliet@example.com", local: "juliet", domain: "example.com", resource: nil),
        Valid(input: "juliet@example.com/foo", local: "juliet", domain: "example.com", resource: "foo"),
        Valid(input: "juliet@example.com/foo bar", local: "juliet", domain: "example.com", resource: "foo bar"),
        Valid(input: "juliet@example.com/foo@bar", local: "juliet", domain: "example.com", resource: "foo@bar"),
        Valid(input: "foo\\20bar@example.com", local: "foo\\20bar", domain: "example.com", resource: nil),
        Valid(input: "fussball@example.com", local: "fussball", domain: "example.com", resource: nil),
        Valid(input: "fu\u{DF}ball@example.com", local: "fu\u{DF}ball", domain: "example.com", resource: nil),
        Valid(input: "\u{3C0}@example.com", local: "\u{3C0}", domain: "example.com", resource: nil),
        Valid(input: "\u{3A3}@example.com/foo", local: "\u{3C3}", domain: "example.com", resource: "foo"),
        Valid(input: "\u{3C3}@example.com/foo", local: "\u{3C3}", domain: "example.com", resource: "foo"),
        Valid(input: "\u{3C2}@example.com/foo", local: "\u{3C2}", domain: "example.com", resource: "foo"),
        Valid(input: "king@example.com/\u{265A}", local: "king", domain: "example.com", resource: "\u{265A}"),
        Valid(input: "example.com", local: nil, domain: "example.com", resource: nil),
        Valid(input: "example.com/foobar", local: nil, domain: "example.com", resource: "foobar"),
        Valid(input: "a.example.com/b@example.net", local: nil, domain: "a.example.com", resource: "b@example.net"),
    ]

    @Test("RFC 7622 §3.5 valid JIDs", arguments: rfcValid)
    func rfcValidExamples(_ example: Valid) throws {
        let jid = try JID(example.input)
        #expect(bytes(jid.localpart) == bytes(example.local))
        #expect(bytes(jid.domainpart) == bytes(example.domain))
        #expect(bytes(jid.resourcepart) == bytes(example.resource))
        // The canonical form parses to itself.
        #expect(try JID(jid.description) == jid)
    }

    // MARK: RFC 7622 §3.5 Table 2

    struct Invalid: Sendable, CustomTestStringConvertible {
        var input: String
        var error: JIDError
        var testDescription: String { input }
    }

    static let rfcInvalid: [Invalid] = [
        Invalid(input: "\"juliet\"@example.com", error: .invalidLocalpartCharacter),
        Invalid(input: "foo bar@example.com", error: .invalidLocalpartCharacter),
        Invalid(input: "juliet@example.com/ foo", error: .invalidResourcepartCharacter),
        Invalid(input: "@example.com/", error: .emptyLocalpart),
        Invalid(input: "henry\u{2163}@example.com", error: .invalidLocalpartCharacter),
        Invalid(input: "\u{265A}@example.com", error: .invalidLocalpartCharacter),
        Invalid(input: "juliet@", error: .emptyDomain),
        Invalid(input: "/foobar", error: .emptyDomain),
    ]

    @Test("RFC 7622 §3.5 invalid JIDs", arguments: rfcInvalid)
    func rfcInvalidExamples(_ example: Invalid) {
        expectJIDError(example.error, example.input)
    }

    // MARK: Other rejections

    @Test func rejectsEmptyAndMalformedParts() {
        expectJIDError(.emptyDomain, "")
        expectJIDError(.emptyLocalpart, "@domain")
        expectJIDError(.emptyDomain, "local@")
        expectJIDError(.emptyDomain, "/res")
        expectJIDError(.emptyResourcepart, "local@domain/")
        expectJIDError(.emptyResourcepart, "domain/")
        expectJIDError(.emptyDomain, "local@/res")
        expectJIDError(.emptyDomain, ".")
        expectJIDError(.invalidDomainCharacter, "a@b@example.com")
        expectJIDError(.invalidLocalpartCharacter, "a:b@example.com")
    }

    @Test(arguments: ["a&b", "a'b", "a:b", "a<b", "a>b", "a\"b", "a b", "a\tb", "a\u{7F}b", "a\u{0}b"])
    func rejectsForbiddenLocalpartCharacters(_ localpart: String) {
        expectJIDError(.invalidLocalpartCharacter, "\(localpart)@example.com")
        #expect(throws: JIDError.invalidLocalpartCharacter) {
            try JID(localpart: localpart, domainpart: "example.com", resourcepart: nil)
        }
    }

    @Test func rejectsForbiddenCharactersAfterWidthMapping() {
        // FULLWIDTH COMMERCIAL AT maps to "@", FULLWIDTH LESS-THAN SIGN to "<".
        expectJIDError(.invalidLocalpartCharacter, "a\u{FF20}b@example.com")
        expectJIDError(.invalidLocalpartCharacter, "a\u{FF1C}b@example.com")
        // IDEOGRAPHIC SPACE maps to U+0020.
        expectJIDError(.invalidLocalpartCharacter, "a\u{3000}b@example.com")
    }

    @Test func rejectsControlCharacters() {
        expectJIDError(.invalidResourcepartCharacter, "a@example.com/x\u{1}y")
        expectJIDError(.invalidResourcepartCharacter, "a@example.com/x\ny")
        expectJIDError(.invalidResourcepartCharacter, "a@example.com/x\u{7F}")
        expectJIDError(.invalidResourcepartCharacter, "a@example.com/x\u{85}y")  // C1 control
        expectJIDError(.invalidResourcepartCharacter, "a@example.com/\u{200B}x")  // default ignorable
        expectJIDError(.invalidLocalpartCharacter, "a\u{85}b@example.com")
        expectJIDError(.invalidDomainCharacter, "a@exa\u{1}mple.com")
    }

    @Test func rejectsInvalidDomains() {
        expectJIDError(.invalidDomainCharacter, "user@exa mple.com")
        expectJIDError(.invalidDomainCharacter, "user@example.com /res")
        expectJIDError(.invalidDomainCharacter, "user@\u{5F20}\u{4F1F} x.example")
        expectJIDError(.invalidDomainCharacter, "user@ex!ample.com")
        expectJIDError(.invalidDomainLabel, "user@example..com")
        expectJIDError(.invalidDomainLabel, "user@.example.com")
        expectJIDError(.invalidDomainLabel, "user@" + String(repeating: "a", count: 64) + ".com")
        expectJIDError(.invalidDomainCharacter, "user@\u{2665}.example")  // symbol in a U-label
        expectJIDError(.invalidDomainLabel, "user@xn--.example")
        expectJIDError(.invalidIPLiteral, "user@[::1")
        expectJIDError(.invalidIPLiteral, "user@[1::2::3]")
        expectJIDError(.invalidIPLiteral, "user@[12345::]")
        expectJIDError(.invalidIPLiteral, "user@[example.com]")
        expectJIDError(.invalidIPLiteral, "user@[1:2:3:4:5:6:7]")
        expectJIDError(.invalidIPLiteral, "user@[::256.1.1.1]")
    }

    @Test func rejectsOverlongParts() throws {
        let long = String(repeating: "a", count: 1024)
        expectJIDError(.localpartTooLong, "\(long)@example.com")
        expectJIDError(.resourcepartTooLong, "a@example.com/\(long)")
        let longDomain = Array(repeating: String(repeating: "d", count: 63), count: 17).joined(separator: ".")
        #expect(longDomain.utf8.count > 1023)
        expectJIDError(.domainTooLong, "a@\(longDomain)")

        // Exactly 1023 bytes is fine, also when made of multi-byte characters.
        let max = String(repeating: "a", count: 1023)
        #expect(try JID("\(max)@example.com/\(max)").localpart?.utf8.count == 1023)
        let chinese = String(repeating: "\u{5F20}", count: 341)  // 1023 bytes
        #expect(try JID("\(chinese)@example.com").localpart == chinese)
        expectJIDError(.localpartTooLong, "\(chinese)\u{5F20}@example.com")
        expectJIDError(.resourcepartTooLong, "a@example.com/\(chinese)\u{5F20}")
    }

    // MARK: Normalisation

    @Test func asciiCaseMapping() throws {
        let jid = try JID("ALICE@Example.COM/Res")
        #expect(jid.description == "alice@example.com/Res")
        #expect(jid.localpart == "alice")
        #expect(jid.domainpart == "example.com")
        #expect(jid.resourcepart == "Res")
        #expect(jid == (try JID("alice@EXAMPLE.com/Res")))
        #expect(jid != (try JID("alice@example.com/res")))
    }

    @Test func fullwidthLocalpart() throws {
        let jid = try JID("\u{FF21}lice@example.com")  // FULLWIDTH LATIN CAPITAL LETTER A
        #expect(bytes(jid.localpart) == bytes("alice"))
        #expect(try JID("\u{FF21}\u{FF2C}\u{FF29}\u{FF23}\u{FF25}@example.com") == (try JID("alice@example.com")))
        // Halfwidth Katakana maps to fullwidth Katakana.
        let katakana = try JID("\u{FF76}@example.com")
        #expect(bytes(katakana.localpart) == bytes("\u{30AB}"))
    }

    @Test func chineseLocalpartIsUnchanged() throws {
        let jid = try JID("\u{5F20}\u{4F1F}@example.com/\u{624B}\u{673A}")
        #expect(bytes(jid.localpart) == bytes("\u{5F20}\u{4F1F}"))
        #expect(bytes(jid.resourcepart) == bytes("\u{624B}\u{673A}"))
        #expect(jid.description == "\u{5F20}\u{4F1F}@example.com/\u{624B}\u{673A}")
    }

    @Test func nfcNormalisation() throws {
        // "é" as e + COMBINING ACUTE ACCENT becomes U+00E9 in every part.
        let jid = try JID("Ce\u{301}line@caf\u{E9}.example/Re\u{301}sume\u{301}")
        #expect(bytes(jid.localpart) == bytes("c\u{E9}line"))
        #expect(bytes(jid.resourcepart) == bytes("R\u{E9}sum\u{E9}"))
        let domain = try JID("user@cafe\u{301}.example")
        #expect(bytes(domain.domainpart) == bytes("caf\u{E9}.example"))
    }

    @Test func resourcepartMapsNonASCIISpaces() throws {
        let jid = try JID("a@example.com/foo\u{A0}bar\u{2003}baz")
        #expect(bytes(jid.resourcepart) == bytes("foo bar baz"))
        // Case and symbols are kept; compatibility characters are allowed in resources.
        #expect(try JID("a@example.com/\u{2163} \u{FF21}").resourcepart == "\u{2163} \u{FF21}")
        expectJIDError(.invalidResourcepartCharacter, "a@example.com/foo ")
        expectJIDError(.invalidResourcepartCharacter, "a@example.com/\u{A0}foo")
    }

    @Test func domainNormalisation() throws {
        #expect(try JID("user@Example.COM.").domainpart == "example.com")
        #expect(try JID("example.com.").description == "example.com")
        #expect(try JID("user@EXAMPLE\u{FF0E}com").domainpart == "example.com")  // FULLWIDTH FULL STOP
        #expect(try JID("user@example\u{3002}com").domainpart == "example.com")  // IDEOGRAPHIC FULL STOP
        #expect(try JID("user@\u{FF25}xample.com").domainpart == "example.com")
        #expect(try JID("user@B\u{DC}CHER.example").domainpart == "b\u{FC}cher.example")
        #expect(try JID("user@\u{5F20}\u{4F1F}.example").domainpart == "\u{5F20}\u{4F1F}.example")
        #expect(try JID("user@under_score.example").domainpart == "under_score.example")
        #expect(try JID("localhost").domainpart == "localhost")
        #expect(try JID("user@127.0.0.1/r").domainpart == "127.0.0.1")
    }

    @Test func aLabelsBecomeULabels() throws {
        let aLabel = try JID("user@xn--bcher-kva.example")
        let uLabel = try JID("user@b\u{FC}cher.example")
        #expect(aLabel == uLabel)
        #expect(bytes(aLabel.domainpart) == bytes("b\u{FC}cher.example"))
        #expect(aLabel.asciiDomainpart == "xn--bcher-kva.example")
        #expect(try JID("XN--MNCHEN-3YA.example").domainpart == "m\u{FC}nchen.example")
        #expect(try JID("example.com").asciiDomainpart == "example.com")
        // A-labels are case-insensitive.
        #expect(try JID("user@xn--Bcher-KVA.example").domainpart == "b\u{FC}cher.example")
        // An A-label must decode to a valid U-label with at least one non-ASCII character.
        expectJIDError(.invalidDomainCharacter, "user@xn--g6h.example")  // U+2665 BLACK HEART SUIT
        expectJIDError(.invalidDomainLabel, "user@xn--abc-.example")
    }

    @Test func punycodeRoundTrip() throws {
        let cases: [(String, String)] = [
            ("b\u{FC}cher", "bcher-kva"),
            ("m\u{FC}nchen", "mnchen-3ya"),
            ("\u{4ED6}\u{4EEC}\u{4E3A}\u{4EC0}\u{4E48}\u{4E0D}\u{8BF4}\u{4E2D}\u{6587}", "ihqwcrb4cv8a8dqg056pqjye"),
        ]
        for (unicode, encoded) in cases {
            let scalars = Array(unicode.unicodeScalars)
            #expect(Punycode.encode(scalars).map { String(decoding: $0, as: UTF8.self) } == encoded)
            #expect(Punycode.decode(Array(encoded.utf8)) == scalars)
        }
        #expect(Punycode.decode(Array("99999999999999999999".utf8)) == nil)
    }

    @Test func ipLiterals() throws {
        #expect(try JID("[::1]").domainpart == "[::1]")
        #expect(try JID("user@[2001:DB8::1]/res").domainpart == "[2001:db8::1]")
        #expect(try JID("[::ffff:192.0.2.1]").domainpart == "[::ffff:192.0.2.1]")
        #expect(try JID("[1:2:3:4:5:6:7:8]").domainpart == "[1:2:3:4:5:6:7:8]")
        #expect(try JID("[::1].").domainpart == "[::1]")
    }

    @Test func contextRules() throws {
        // MIDDLE DOT only between two "l" (Catalan).
        #expect(try JID("col\u{B7}lega@example.com").localpart == "col\u{B7}lega")
        expectJIDError(.invalidLocalpartCharacter, "a\u{B7}b@example.com")
        // ZERO WIDTH JOINER (CONTEXTJ) is only allowed after a virama.
        expectJIDError(.invalidLocalpartCharacter, "a\u{200D}b@example.com")
        #expect(try JID("\u{915}\u{94D}\u{200D}\u{937}@example.com").localpart != nil)
        // KATAKANA MIDDLE DOT needs Hiragana, Katakana or Han in the string.
        #expect(try JID("\u{30AB}\u{30FB}\u{30AB}@example.com").localpart != nil)
        expectJIDError(.invalidLocalpartCharacter, "a\u{30FB}b@example.com")
    }

    // MARK: Fast path and slow path agree

    @Test(arguments: [
        "ALICE@Example.COM/Res", "juliet@example.com/foo bar", "x@y", "Under_Score@Sub.Domain.Example/r/with/slashes",
        "a!#$%()*+,-.;=?[\\]^_`{|}~@example.com/!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "foo\\20bar@example.com", "MiXeD.CaSe@XN--BCHER-KVA.Example./R",
    ])
    func fastAndSlowPathsAgree(_ input: String) throws {
        let fast = try JID(input)
        let atIndex = input.firstIndex(of: "@")
        let slashIndex = input.firstIndex(of: "/") ?? input.endIndex
        let hasLocal = atIndex.map { $0 < slashIndex } ?? false
        let local = hasLocal ? String(input[..<(atIndex ?? input.startIndex)]) : nil
        let domainStart = hasLocal ? input.index(after: atIndex ?? input.startIndex) : input.startIndex
        let domain = String(input[domainStart..<slashIndex])
        let resource = slashIndex < input.endIndex ? String(input[input.index(after: slashIndex)...]) : nil

        let slowLocal = try local.map { s throws(JIDError) in try JID.prepareLocalpartSlow(s) }
        let slowDomain = try JID.prepareDomainpartSlow(domain)
        let slowResource = try resource.map { s throws(JIDError) in try JID.prepareResourcepartSlow(s) }
        #expect(bytes(fast.localpart) == bytes(slowLocal))
        #expect(bytes(fast.domainpart) == bytes(slowDomain))
        #expect(bytes(fast.resourcepart) == bytes(slowResource))
    }

    @Test func fastAndSlowPathsAgreeOnEveryASCIICharacter() {
        for value in UInt8(0)..<0x80 {
            let character = String(UnicodeScalar(value))
            let inputs = ["a\(character)b", "\(character)"]
            for input in inputs {
                let fastLocal = Result { () throws(JIDError) in try JID(localpart: input, domainpart: "d", resourcepart: nil).localpart }
                let slowLocal = Result { () throws(JIDError) in try JID.prepareLocalpartSlow(input) }
                #expect(fastLocal.map(bytes) == slowLocal.map(bytes), "localpart \(value)")
                let fastResource = Result { () throws(JIDError) in try JID(localpart: nil, domainpart: "d", resourcepart: input).resourcepart }
                let slowResource = Result { () throws(JIDError) in try JID.prepareResourcepartSlow(input) }
                #expect(fastResource.map(bytes) == slowResource.map(bytes), "resourcepart \(value)")
                if value != UInt8(ascii: "/") && value != UInt8(ascii: "@") {
                    let fastDomain = Result { () throws(JIDError) in try JID(localpart: nil, domainpart: input, resourcepart: nil).domainpart }
                    let slowDomain = Result { () throws(JIDError) in try JID.prepareDomainpartSlow(input) }
                    #expect(fastDomain.map(bytes) == slowDomain.map(bytes), "domainpart \(value)")
                }
            }
        }
    }

    // MARK: API

    @Test func bareAndWithResource() throws {
        let full = try JID("Romeo@Example.net/Orchard")
        #expect(!full.isBare)
        let bare = full.bare
        #expect(bare.isBare)
        #expect(bare.description == "romeo@example.net")
        #expect(bare == (try JID("romeo@example.net")))
        #expect(bare.bare == bare)

        let other = try bare.withResource("Balcony\u{A0}2")
        #expect(other.description == "romeo@example.net/Balcony 2")
        #expect(other.bare == bare)
        #expect(throws: JIDError.emptyResourcepart) { try bare.withResource("") }
        #expect(throws: JIDError.invalidResourcepartCharacter) { try bare.withResource("a\u{0}") }

        let domainOnly = try JID("example.net/service")
        #expect(domainOnly.bare.description == "example.net")
        #expect(domainOnly.localpart == nil)
    }

    @Test func partsInitializer() throws {
        let jid = try JID(localpart: "Juliet", domainpart: "Capulet.example", resourcepart: "Balcony")
        #expect(jid.description == "juliet@capulet.example/Balcony")
        #expect(try JID(localpart: nil, domainpart: "example.com", resourcepart: nil).description == "example.com")
        #expect(throws: JIDError.emptyLocalpart) { try JID(localpart: "", domainpart: "example.com", resourcepart: nil) }
        #expect(throws: JIDError.emptyDomain) { try JID(localpart: "a", domainpart: "", resourcepart: nil) }
        #expect(throws: JIDError.invalidLocalpartCharacter) { try JID(localpart: "a@b", domainpart: "example.com", resourcepart: nil) }
        #expect(throws: JIDError.invalidDomainCharacter) { try JID(localpart: "a", domainpart: "example.com/x", resourcepart: nil) }
        // A resource may contain "/" and "@".
        #expect(try JID(localpart: "a", domainpart: "b", resourcepart: "c/d@e").description == "a@b/c/d@e")
    }

    @Test func hashingAndEquality() throws {
        let set: Set<JID> = [try JID("A@B/C"), try JID("a@b/C"), try JID("a@B./C")]
        #expect(set.count == 1)
        #expect(try JID("a@b") != (try JID("a@b/c")))
        #expect(try JID("b") != (try JID("a@b")))
    }

    @Test func codable() throws {
        let jid = try JID("Juliet@Example.com/Balcony")
        let data = try JSONEncoder().encode([jid])
        #expect(String(decoding: data, as: UTF8.self).contains("juliet@example.com"))
        #expect(try JSONDecoder().decode([JID].self, from: data) == [jid])
        #expect(throws: DecodingError.self) { try JSONDecoder().decode([JID].self, from: Data("[\"@x\"]".utf8)) }
    }

    @Test func errorDescriptions() {
        #expect(JIDError.emptyLocalpart.description.contains("localpart"))
        #expect(JIDError.invalidIPLiteral.description.contains("IP"))
        #expect(JIDError.emptyDomain != JIDError.emptyLocalpart)
    }
}
