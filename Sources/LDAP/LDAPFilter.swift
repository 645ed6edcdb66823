import SwiftASN1

/// A search filter (RFC 4511 §4.5.1), parsed from and printed as RFC 4515 strings.
///
/// ```swift
/// let filter = try LDAPFilter("(&(objectClass=inetOrgPerson)(cn=张*))")
/// let safe = try LDAPFilter("(uid=\(LDAPFilter.escape(userInput)))")
/// ```
///
/// Values are bytes: `\XX` escapes may produce any octet (binary `objectGUID` matches).
public indirect enum LDAPFilter: Sendable, Hashable, CustomStringConvertible {
    case and([LDAPFilter])
    case or([LDAPFilter])
    case not(LDAPFilter)
    case equality(attribute: String, value: [UInt8])
    case substrings(attribute: String, initial: [UInt8]?, any: [[UInt8]], final: [UInt8]?)
    case greaterOrEqual(attribute: String, value: [UInt8])
    case lessOrEqual(attribute: String, value: [UInt8])
    case present(attribute: String)
    case approx(attribute: String, value: [UInt8])
    /// `(attr:dn:rule:=value)`; e.g. AD's bit test `(userAccountControl:1.2.840.113556.1.4.803:=2)`.
    case extensible(matchingRule: String?, attribute: String?, value: [UInt8], dnAttributes: Bool)

    /// Deepest nesting accepted by the parser; keeps recursion (and the BER tree) bounded.
    public static let maximumDepth = 32
    /// Longest filter string accepted by the parser.
    public static let maximumLength = 64 * 1024

    /// `(objectClass=*)`: matches every entry.
    public static let any = LDAPFilter.present(attribute: "objectClass")

    public static func equality(_ attribute: String, _ value: String) -> LDAPFilter {
        .equality(attribute: attribute, value: Array(value.utf8))
    }

    /// Parses an RFC 4515 filter. The outer parentheses may be omitted (`uid=alice`).
    /// - Throws: `LDAPError.invalidArgument` with the position of the problem.
    public init(_ string: String) throws {
        var parser = FilterParser(Array(string.utf8))
        self = try parser.parseTop()
    }

    /// Escapes a value for use inside a filter string (RFC 4515 §3): `*`, `(`, `)`, `\` and NUL
    /// become `\2a`, `\28`, `\29`, `\5c`, `\00`. Use it for every user-supplied value.
    public static func escape(_ value: String) -> String {
        escape(bytes: Array(value.utf8))
    }

    static func escape(bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "*"), UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "\\"), 0:
                out.append(UInt8(ascii: "\\"))
                out.append(contentsOf: Self.hex(byte))
            default:
                out.append(byte)
            }
        }
        // Invalid UTF-8 (binary values) is escaped octet by octet so the result stays a valid string.
        if String(validating: out, as: UTF8.self) == nil {
            return bytes.map { "\\" + String(decoding: Self.hex($0), as: UTF8.self) }.joined()
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func hex(_ byte: UInt8) -> [UInt8] {
        let digits = Array("0123456789abcdef".utf8)
        return [digits[Int(byte >> 4)], digits[Int(byte & 0xF)]]
    }

    /// The RFC 4515 string form.
    public var description: String {
        switch self {
        case .and(let filters): return "(&" + filters.map(\.description).joined() + ")"
        case .or(let filters): return "(|" + filters.map(\.description).joined() + ")"
        case .not(let filter): return "(!" + filter.description + ")"
        case .equality(let attribute, let value): return "(\(attribute)=\(Self.escape(bytes: value)))"
        case .substrings(let attribute, let initial, let any, let final):
            var text = "(\(attribute)=" + (initial.map { Self.escape(bytes: $0) } ?? "") + "*"
            for part in any { text += Self.escape(bytes: part) + "*" }
            return text + (final.map { Self.escape(bytes: $0) } ?? "") + ")"
        case .greaterOrEqual(let attribute, let value): return "(\(attribute)>=\(Self.escape(bytes: value)))"
        case .lessOrEqual(let attribute, let value): return "(\(attribute)<=\(Self.escape(bytes: value)))"
        case .present(let attribute): return "(\(attribute)=*)"
        case .approx(let attribute, let value): return "(\(attribute)~=\(Self.escape(bytes: value)))"
        case .extensible(let rule, let attribute, let value, let dnAttributes):
            return "(" + (attribute ?? "") + (dnAttributes ? ":dn" : "") + (rule.map { ":" + $0 } ?? "")
                + ":=" + Self.escape(bytes: value) + ")"
        }
    }
}

// MARK: - BER

extension LDAPFilter {
    //   Filter ::= CHOICE {
    //        and             [0] SET SIZE (1..MAX) OF filter Filter,
    //        or              [1] SET SIZE (1..MAX) OF filter Filter,
    //        not             [2] Filter,
    //        equalityMatch   [3] AttributeValueAssertion,
    //        substrings      [4] SubstringFilter,
    //        greaterOrEqual  [5] AttributeValueAssertion,
    //        lessOrEqual     [6] AttributeValueAssertion,
    //        present         [7] AttributeDescription,
    //        approxMatch     [8] AttributeValueAssertion,
    //        extensibleMatch [9] MatchingRuleAssertion,
    //        ...  }
    func encode(into serializer: inout DER.Serializer) {
        switch self {
        case .and(let filters):
            serializer.appendConstructedNode(identifier: .context(0)) { inner in
                for filter in filters { filter.encode(into: &inner) }
            }
        case .or(let filters):
            serializer.appendConstructedNode(identifier: .context(1)) { inner in
                for filter in filters { filter.encode(into: &inner) }
            }
        case .not(let filter):
            serializer.appendConstructedNode(identifier: .context(2)) { filter.encode(into: &$0) }
        case .equality(let attribute, let value):
            Self.encodeAssertion(3, attribute, value, into: &serializer)
        case .substrings(let attribute, let initial, let any, let final):
            serializer.appendConstructedNode(identifier: .context(4)) { inner in
                inner.appendString(attribute)
                inner.appendConstructedNode(identifier: .sequence) { parts in
                    if let initial { parts.appendOctets(initial, identifier: .context(0)) }
                    for part in any { parts.appendOctets(part, identifier: .context(1)) }
                    if let final { parts.appendOctets(final, identifier: .context(2)) }
                }
            }
        case .greaterOrEqual(let attribute, let value):
            Self.encodeAssertion(5, attribute, value, into: &serializer)
        case .lessOrEqual(let attribute, let value):
            Self.encodeAssertion(6, attribute, value, into: &serializer)
        case .present(let attribute):
            serializer.appendString(attribute, identifier: .context(7))
        case .approx(let attribute, let value):
            Self.encodeAssertion(8, attribute, value, into: &serializer)
        case .extensible(let rule, let attribute, let value, let dnAttributes):
            serializer.appendConstructedNode(identifier: .context(9)) { inner in
                if let rule { inner.appendString(rule, identifier: .context(1)) }
                if let attribute { inner.appendString(attribute, identifier: .context(2)) }
                inner.appendOctets(value, identifier: .context(3))
                if dnAttributes { inner.appendBoolean(true, identifier: .context(4)) }
            }
        }
    }

    private static func encodeAssertion(_ tag: UInt, _ attribute: String, _ value: [UInt8], into serializer: inout DER.Serializer) {
        serializer.appendConstructedNode(identifier: .context(tag)) { inner in
            inner.appendString(attribute)
            inner.appendOctets(value)
        }
    }

    /// Decodes a Filter (used by tests and by anything that inspects a request).
    init(node: ASN1Node, depth: Int = 0) throws {
        guard depth <= Self.maximumDepth else { throw LDAPError.protocolError("filter nested too deeply") }
        guard node.identifier.tagClass == .contextSpecific else {
            throw LDAPError.protocolError("filter: unexpected tag \(node.identifier)")
        }
        let tag = node.identifier.tagNumber
        switch tag {
        case 0, 1:
            let cursor = try node.children(node.identifier, "filter set")
            let filters = try cursor.remaining.map { try LDAPFilter(node: $0, depth: depth + 1) }
            self = tag == 0 ? .and(filters) : .or(filters)
        case 2:
            var cursor = try node.children(.context(2), "not filter")
            self = .not(try LDAPFilter(node: try cursor.next("filter"), depth: depth + 1))
        case 3, 5, 6, 8:
            var cursor = try node.children(node.identifier, "attribute value assertion")
            let attribute = try cursor.next("attributeDesc").string("attributeDesc")
            let value = try cursor.next("assertionValue").octets(.octetString, "assertionValue")
            switch tag {
            case 3: self = .equality(attribute: attribute, value: value)
            case 5: self = .greaterOrEqual(attribute: attribute, value: value)
            case 6: self = .lessOrEqual(attribute: attribute, value: value)
            default: self = .approx(attribute: attribute, value: value)
            }
        case 4:
            var cursor = try node.children(.context(4), "substring filter")
            let attribute = try cursor.next("type").string("type")
            let parts = try cursor.next("substrings").children(.sequence, "substrings")
            var initial: [UInt8]?
            var any: [[UInt8]] = []
            var final: [UInt8]?
            for part in parts.remaining {
                switch part.identifier {
                case .context(0): initial = try part.octets(.context(0), "initial")
                case .context(1): any.append(try part.octets(.context(1), "any"))
                case .context(2): final = try part.octets(.context(2), "final")
                default: throw LDAPError.protocolError("substring filter: unexpected tag \(part.identifier)")
                }
            }
            self = .substrings(attribute: attribute, initial: initial, any: any, final: final)
        case 7:
            self = .present(attribute: try node.string(.context(7), "present"))
        case 9:
            var cursor = try node.children(.context(9), "extensible match")
            let rule = try cursor.optional(.context(1)).map { try $0.string(.context(1), "matchingRule") }
            let attribute = try cursor.optional(.context(2)).map { try $0.string(.context(2), "type") }
            let value = try cursor.next("matchValue").octets(.context(3), "matchValue")
            let dnAttributes = try cursor.optional(.context(4)).map { try $0.boolean(.context(4), "dnAttributes") } ?? false
            self = .extensible(matchingRule: rule, attribute: attribute, value: value, dnAttributes: dnAttributes)
        default:
            throw LDAPError.protocolError("filter: unknown choice [\(tag)]")
        }
    }
}

// MARK: - RFC 4515 parser

/// Recursive descent over the UTF-8 bytes of a filter string.
private struct FilterParser {
    private let bytes: [UInt8]
    private var position = 0

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    private func fail(_ message: String) -> LDAPError {
        .invalidArgument("invalid LDAP filter at offset \(position): \(message)")
    }

    private var current: UInt8? { position < bytes.count ? bytes[position] : nil }

    private mutating func expect(_ byte: UInt8) throws {
        guard current == byte else { throw fail("expected '\(Character(Unicode.Scalar(byte)))'") }
        position += 1
    }

    mutating func parseTop() throws -> LDAPFilter {
        guard bytes.count <= LDAPFilter.maximumLength else { throw fail("longer than \(LDAPFilter.maximumLength) bytes") }
        // Surrounding whitespace is tolerated; a bare item (`uid=alice`) is treated as `(uid=alice)`.
        while current == UInt8(ascii: " ") { position += 1 }
        let filter: LDAPFilter
        if current == UInt8(ascii: "(") {
            filter = try parseFilter(depth: 0)
        } else {
            filter = try parseItem()
        }
        while current == UInt8(ascii: " ") { position += 1 }
        guard position == bytes.count else { throw fail("unexpected text after the filter") }
        return filter
    }

    private mutating func parseFilter(depth: Int) throws -> LDAPFilter {
        guard depth < LDAPFilter.maximumDepth else { throw fail("nested deeper than \(LDAPFilter.maximumDepth)") }
        try expect(UInt8(ascii: "("))
        let filter: LDAPFilter
        switch current {
        case UInt8(ascii: "&"):
            position += 1
            filter = .and(try parseList(depth: depth))
        case UInt8(ascii: "|"):
            position += 1
            filter = .or(try parseList(depth: depth))
        case UInt8(ascii: "!"):
            position += 1
            filter = .not(try parseFilter(depth: depth + 1))
        case nil:
            throw fail("unexpected end")
        default:
            filter = try parseItem()
        }
        try expect(UInt8(ascii: ")"))
        return filter
    }

    /// `1*filter`; RFC 4526 absolute true/false `(&)` / `(|)` are accepted as empty lists.
    private mutating func parseList(depth: Int) throws -> [LDAPFilter] {
        var filters: [LDAPFilter] = []
        while current == UInt8(ascii: "(") {
            filters.append(try parseFilter(depth: depth + 1))
        }
        return filters
    }

    private static func isDescriptorByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: ";"):
            return true
        default:
            return false
        }
    }

    private mutating func parseDescriptor() -> String {
        let start = position
        while let byte = current, Self.isDescriptorByte(byte) { position += 1 }
        return String(decoding: bytes[start..<position], as: UTF8.self)
    }

    private mutating func parseItem() throws -> LDAPFilter {
        let attribute = parseDescriptor()
        switch current {
        case UInt8(ascii: ":"):
            return try parseExtensible(attribute: attribute.isEmpty ? nil : attribute)
        case UInt8(ascii: "~"), UInt8(ascii: ">"), UInt8(ascii: "<"):
            guard !attribute.isEmpty else { throw fail("missing attribute description") }
            let kind = current
            position += 1
            try expect(UInt8(ascii: "="))
            let value = try parseValue(allowStar: false)
            switch kind {
            case UInt8(ascii: "~"): return .approx(attribute: attribute, value: value)
            case UInt8(ascii: ">"): return .greaterOrEqual(attribute: attribute, value: value)
            default: return .lessOrEqual(attribute: attribute, value: value)
            }
        case UInt8(ascii: "="):
            guard !attribute.isEmpty else { throw fail("missing attribute description") }
            position += 1
            return try parseEqualityOrSubstring(attribute: attribute)
        case nil:
            throw fail("unexpected end")
        default:
            throw fail(attribute.isEmpty ? "missing attribute description" : "expected '=', '~=', '>=', '<=' or ':'")
        }
    }

    /// `attr [":dn"] [":" rule] ":=" value` or `[":dn"] ":" rule ":=" value`.
    private mutating func parseExtensible(attribute: String?) throws -> LDAPFilter {
        var dnAttributes = false
        var rule: String?
        while current == UInt8(ascii: ":") {
            position += 1
            if current == UInt8(ascii: "=") {
                position += 1
                guard attribute != nil || rule != nil else { throw fail("extensible match needs an attribute or a matching rule") }
                let value = try parseValue(allowStar: false)
                return .extensible(matchingRule: rule, attribute: attribute, value: value, dnAttributes: dnAttributes)
            }
            let word = parseDescriptor()
            guard !word.isEmpty else { throw fail("empty component in extensible match") }
            if word.lowercased() == "dn" && !dnAttributes && rule == nil {
                dnAttributes = true
            } else if rule == nil {
                rule = word
            } else {
                throw fail("unexpected '\(word)' in extensible match")
            }
        }
        throw fail("extensible match needs ':='")
    }

    private mutating func parseEqualityOrSubstring(attribute: String) throws -> LDAPFilter {
        // Split the raw value on unescaped '*'.
        var parts: [[UInt8]] = [try parseValue(allowStar: true)]
        while current == UInt8(ascii: "*") {
            position += 1
            parts.append(try parseValue(allowStar: true))
        }
        if parts.count == 1 { return .equality(attribute: attribute, value: parts[0]) }
        if parts.count == 2 && parts[0].isEmpty && parts[1].isEmpty { return .present(attribute: attribute) }
        let initial = parts[0].isEmpty ? nil : parts[0]
        let final = parts[parts.count - 1].isEmpty ? nil : parts[parts.count - 1]
        let middle = parts[1..<(parts.count - 1)]
        guard !middle.contains(where: \.isEmpty) else { throw fail("'**' in a substring filter") }
        return .substrings(attribute: attribute, initial: initial, any: Array(middle), final: final)
    }

    /// An assertion value up to `)` (or `*` when allowed), resolving `\XX` escapes.
    private mutating func parseValue(allowStar: Bool) throws -> [UInt8] {
        var value: [UInt8] = []
        while let byte = current {
            switch byte {
            case UInt8(ascii: ")"):
                return value
            case UInt8(ascii: "*"):
                guard allowStar else { throw fail("unescaped '*' in a value (write \\2a)") }
                return value
            case UInt8(ascii: "("):
                throw fail("unescaped '(' in a value (write \\28)")
            case 0:
                throw fail("NUL in a value (write \\00)")
            case UInt8(ascii: "\\"):
                guard position + 2 < bytes.count, let high = Self.hexValue(bytes[position + 1]),
                    let low = Self.hexValue(bytes[position + 2])
                else { throw fail("'\\' must be followed by two hex digits") }
                value.append(high << 4 | low)
                position += 3
            default:
                value.append(byte)
                position += 1
            }
        }
        return value
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
