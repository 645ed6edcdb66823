import SwiftASN1
import Testing

@testable import LDAP

@Suite("RFC 4515 filters")
struct LDAPFilterTests {
    private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    @Test func equalityWithChineseValue() throws {
        #expect(try LDAPFilter("(cn=张伟)") == .equality(attribute: "cn", value: bytes("张伟")))
        #expect(try LDAPFilter("cn=张伟") == .equality(attribute: "cn", value: bytes("张伟")))
    }

    @Test func presentSubstringsAndComparisons() throws {
        #expect(try LDAPFilter("(objectClass=*)") == .present(attribute: "objectClass"))
        #expect(
            try LDAPFilter("(cn=张*伟*明)")
                == .substrings(attribute: "cn", initial: bytes("张"), any: [bytes("伟")], final: bytes("明")))
        #expect(try LDAPFilter("(uid=*wei)") == .substrings(attribute: "uid", initial: nil, any: [], final: bytes("wei")))
        #expect(try LDAPFilter("(uid=zhang*)") == .substrings(attribute: "uid", initial: bytes("zhang"), any: [], final: nil))
        #expect(
            try LDAPFilter("(uid=*a*b*)") == .substrings(attribute: "uid", initial: nil, any: [bytes("a"), bytes("b")], final: nil))
        #expect(try LDAPFilter("(employeeNumber>=10100)") == .greaterOrEqual(attribute: "employeeNumber", value: bytes("10100")))
        #expect(try LDAPFilter("(employeeNumber<=10100)") == .lessOrEqual(attribute: "employeeNumber", value: bytes("10100")))
        #expect(try LDAPFilter("(sn~=zhang)") == .approx(attribute: "sn", value: bytes("zhang")))
    }

    @Test func booleanCombinations() throws {
        let filter = try LDAPFilter("(&(objectClass=inetOrgPerson)(|(title=会计)(title=出纳))(!(employeeType=disabled)))")
        #expect(
            filter
                == .and([
                    .equality("objectClass", "inetOrgPerson"),
                    .or([.equality("title", "会计"), .equality("title", "出纳")]),
                    .not(.equality("employeeType", "disabled")),
                ]))
        #expect(try LDAPFilter("(&)") == .and([]))
        #expect(try LDAPFilter("  (|(a=1)(b=2))  ") == .or([.equality("a", "1"), .equality("b", "2")]))
    }

    @Test func extensibleMatchForms() throws {
        #expect(
            try LDAPFilter("(userAccountControl:1.2.840.113556.1.4.803:=2)")
                == .extensible(matchingRule: "1.2.840.113556.1.4.803", attribute: "userAccountControl", value: bytes("2"), dnAttributes: false))
        #expect(
            try LDAPFilter("(cn:caseExactMatch:=张伟)")
                == .extensible(matchingRule: "caseExactMatch", attribute: "cn", value: bytes("张伟"), dnAttributes: false))
        #expect(try LDAPFilter("(ou:dn:=存储组)") == .extensible(matchingRule: nil, attribute: "ou", value: bytes("存储组"), dnAttributes: true))
        #expect(
            try LDAPFilter("(:dn:2.4.6.8.10:=Dino)")
                == .extensible(matchingRule: "2.4.6.8.10", attribute: nil, value: bytes("Dino"), dnAttributes: true))
        #expect(
            try LDAPFilter("(o:dn:caseIgnoreMatch:=x)")
                == .extensible(matchingRule: "caseIgnoreMatch", attribute: "o", value: bytes("x"), dnAttributes: true))
    }

    @Test func escapesDecodeToBytes() throws {
        #expect(try LDAPFilter("(cn=a\\2a\\28b\\29\\5c)") == .equality(attribute: "cn", value: bytes("a*(b)\\")))
        #expect(try LDAPFilter("(cn=\\E5\\BC\\A0)") == .equality(attribute: "cn", value: bytes("张")))
        // RFC 4515 §4 example: binary objectGUID-like value.
        #expect(
            try LDAPFilter("(objectGUID=\\04\\02\\48\\00)") == .equality(attribute: "objectGUID", value: [0x04, 0x02, 0x48, 0x00]))
    }

    @Test(arguments: [
        "", "(", "()", "(cn=a", "cn=a)", "(cn=a)(cn=b)", "(=a)", "(cn)", "(cn=a(b)", "(cn=\\4)", "(cn=\\zz)",
        "(cn~=a*)", "(cn>=*)", "(cn=a**b)", "(!(a=1)(b=2))", "(:=x)", "(cn:=)x", "(cn:rule)", "(&(a=1)", "(|(a=1)x)",
    ])
    func malformedFiltersAreRejected(_ text: String) {
        #expect(throws: LDAPError.self) { try LDAPFilter(text) }
    }

    /// Every example of RFC 4515 §4.
    @Test(arguments: [
        "(cn=Babs Jensen)", "(!(cn=Tim Howes))", "(&(objectClass=Person)(|(sn=Jensen)(cn=Babs J*)))", "(o=univ*of*mich*)",
        "(seeAlso=)", "(cn:caseExactMatch:=Fred Flintstone)", "(cn:=Betty Rubble)", "(sn:dn:2.4.6.8.10:=Barney Rubble)",
        "(o:dn:=Ace Industry)", "(:1.2.3:=Wilma Flintstone)", "(:DN:2.4.6.8.10:=Dino)",
        "(o=Parens R Us \\28for all your parenthetical needs\\29)", "(cn=*\\2A*)", "(filename=C:\\5cMyFile)",
        "(bin=\\00\\00\\00\\04)", "(sn=Lu\\c4\\8di\\c4\\87)", "(1.3.6.1.4.1.1466.0=\\04\\02\\48\\69)",
    ])
    func rfc4515Examples(_ text: String) throws {
        let filter = try LDAPFilter(text)
        var serializer = DER.Serializer()
        filter.encode(into: &serializer)
        #expect(try LDAPFilter(node: try BER.parse(serializer.serializedBytes)) == filter)
        #expect(try LDAPFilter(filter.description) == filter)
    }

    @Test func rfc4515ExampleValues() throws {
        #expect(try LDAPFilter("(seeAlso=)") == .equality(attribute: "seeAlso", value: []))
        #expect(try LDAPFilter("(cn=*\\2A*)") == .substrings(attribute: "cn", initial: nil, any: [bytes("*")], final: nil))
        #expect(try LDAPFilter("(sn=Lu\\c4\\8di\\c4\\87)") == .equality("sn", "Lučić"))
        #expect(try LDAPFilter("(:DN:2.4.6.8.10:=Dino)") == .extensible(matchingRule: "2.4.6.8.10", attribute: nil, value: bytes("Dino"), dnAttributes: true))
        #expect(try LDAPFilter("(cn:=Betty Rubble)") == .extensible(matchingRule: nil, attribute: "cn", value: bytes("Betty Rubble"), dnAttributes: false))
    }

    @Test func nestingIsBounded() throws {
        let deep = String(repeating: "(!", count: 40) + "(a=1)" + String(repeating: ")", count: 40)
        #expect(throws: LDAPError.self) { try LDAPFilter(deep) }
        let fine = String(repeating: "(!", count: 10) + "(a=1)" + String(repeating: ")", count: 10)
        _ = try LDAPFilter(fine)
    }

    @Test func escapeNeutralisesInjection() throws {
        let hostile = "*)(uid=*))(|(uid=*"
        let escaped = LDAPFilter.escape(hostile)
        #expect(escaped == "\\2a\\29\\28uid=\\2a\\29\\29\\28|\\28uid=\\2a")
        #expect(try LDAPFilter("(uid=\(escaped))") == .equality(attribute: "uid", value: bytes(hostile)))
        #expect(LDAPFilter.escape("张伟") == "张伟")
        #expect(LDAPFilter.escape("a\u{0}b\\") == "a\\00b\\5c")
    }

    @Test(arguments: [
        "(cn=张伟)", "(&(objectClass=inetOrgPerson)(|(uid=zhang*)(cn=*伟))(!(employeeType=disabled)))",
        "(userAccountControl:1.2.840.113556.1.4.803:=2)", "(ou:dn:=存储组)", "(:dn:2.4.6.8.10:=Dino)",
        "(cn=a\\2a\\28\\29\\5c)", "(uid=*a*b*c)", "(x>=1)", "(x<=1)", "(x~=y)", "(x=*)", "(|)",
    ])
    func printsBackToAnEquivalentString(_ text: String) throws {
        let filter = try LDAPFilter(text)
        #expect(try LDAPFilter(filter.description) == filter)
        #expect(filter.description == text)
    }

    @Test func berEncodingMatchesRFCExample() throws {
        // (cn=Babs Jensen): [3] { "cn", "Babs Jensen" }
        var serializer = DER.Serializer()
        try LDAPFilter("(cn=Babs Jensen)").encode(into: &serializer)
        #expect(
            serializer.serializedBytes
                == [0xA3, 0x11, 0x04, 0x02, 0x63, 0x6E, 0x04, 0x0B, 0x42, 0x61, 0x62, 0x73, 0x20, 0x4A, 0x65, 0x6E, 0x73, 0x65, 0x6E])
        // (objectClass=*): [7] primitive "objectClass"
        serializer = DER.Serializer()
        LDAPFilter.any.encode(into: &serializer)
        #expect(serializer.serializedBytes == [0x87, 0x0B] + Array("objectClass".utf8))
        // (!(a=1)) -> [2] constructed containing [3]
        serializer = DER.Serializer()
        try LDAPFilter("(!(a=1))").encode(into: &serializer)
        #expect(serializer.serializedBytes == [0xA2, 0x08, 0xA3, 0x06, 0x04, 0x01, 0x61, 0x04, 0x01, 0x31])
        // extensible with dnAttributes: [9] { [2] "ou", [3] value, [4] TRUE }
        serializer = DER.Serializer()
        try LDAPFilter("(ou:dn:=x)").encode(into: &serializer)
        #expect(serializer.serializedBytes == [0xA9, 0x0A, 0x82, 0x02, 0x6F, 0x75, 0x83, 0x01, 0x78, 0x84, 0x01, 0xFF])
    }

    @Test(arguments: [
        "(cn=张伟)", "(&(a=1)(|(b=2)(!(c=3))))", "(cn=张*伟*明)", "(x:1.2.3:=v)", "(:dn:1.2:=v)", "(a>=1)", "(a<=1)",
        "(a~=1)", "(a=*)",
    ])
    func berRoundTrip(_ text: String) throws {
        let filter = try LDAPFilter(text)
        var serializer = DER.Serializer()
        filter.encode(into: &serializer)
        #expect(try LDAPFilter(node: try BER.parse(serializer.serializedBytes)) == filter)
    }
}
