import SwiftASN1

// Small BER readers and writers shared by the LDAP message, filter and control codecs.
//
// LDAP (RFC 4511 §5.1) uses a restricted BER: definite lengths only, primitive OCTET STRINGs,
// BOOLEAN TRUE may be any non-zero octet. swift-asn1's `BER.parse` builds the node tree; these
// helpers read typed values from it and throw `LDAPError.protocolError` on anything unexpected,
// so a hostile server cannot make the client trap.

extension ASN1Identifier {
    static func application(_ number: UInt) -> ASN1Identifier { ASN1Identifier(tagWithNumber: number, tagClass: .application) }
    static func context(_ number: UInt) -> ASN1Identifier { ASN1Identifier(tagWithNumber: number, tagClass: .contextSpecific) }
}

extension ASN1Node {
    /// The content octets of a primitive node with the expected tag.
    func primitiveBytes(_ identifier: ASN1Identifier, _ what: @autoclosure () -> String) throws -> ArraySlice<UInt8> {
        guard self.identifier == identifier else {
            throw LDAPError.protocolError("\(what()): expected tag \(identifier), got \(self.identifier)")
        }
        guard case .primitive(let bytes) = content else {
            throw LDAPError.protocolError("\(what()): expected a primitive encoding")
        }
        return bytes
    }

    /// The children of a constructed node with the expected tag.
    func children(_ identifier: ASN1Identifier, _ what: @autoclosure () -> String) throws -> NodeCursor {
        guard self.identifier == identifier else {
            throw LDAPError.protocolError("\(what()): expected tag \(identifier), got \(self.identifier)")
        }
        guard case .constructed(let nodes) = content else {
            throw LDAPError.protocolError("\(what()): expected a constructed encoding")
        }
        return NodeCursor(Array(nodes), what: what())
    }

    func octets(_ identifier: ASN1Identifier = .octetString, _ what: @autoclosure () -> String) throws -> [UInt8] {
        Array(try primitiveBytes(identifier, what()))
    }

    func octets(_ what: @autoclosure () -> String) throws -> [UInt8] { try octets(.octetString, what()) }
    func string(_ what: @autoclosure () -> String) throws -> String { try string(.octetString, what()) }
    func boolean(_ what: @autoclosure () -> String) throws -> Bool { try boolean(.boolean, what()) }

    /// An LDAPString: UTF-8 (invalid sequences become U+FFFD rather than failing the whole message).
    func string(_ identifier: ASN1Identifier = .octetString, _ what: @autoclosure () -> String) throws -> String {
        String(decoding: try primitiveBytes(identifier, what()), as: UTF8.self)
    }

    /// INTEGER or ENUMERATED, two's complement, at most 8 octets.
    func integer(_ identifier: ASN1Identifier = .integer, _ what: @autoclosure () -> String) throws -> Int64 {
        let bytes = try primitiveBytes(identifier, what())
        guard let first = bytes.first, bytes.count <= 8 else {
            throw LDAPError.protocolError("\(what()): integer of \(bytes.count) octets")
        }
        var value: Int64 = first >= 0x80 ? -1 : 0
        for byte in bytes { value = (value << 8) | Int64(byte) }
        return value
    }

    func boolean(_ identifier: ASN1Identifier = .boolean, _ what: @autoclosure () -> String) throws -> Bool {
        let bytes = try primitiveBytes(identifier, what())
        guard bytes.count == 1, let byte = bytes.first else {
            throw LDAPError.protocolError("\(what()): BOOLEAN of \(bytes.count) octets")
        }
        return byte != 0
    }
}

/// Reads the elements of a SEQUENCE in order, with look-ahead for OPTIONAL and DEFAULT fields.
struct NodeCursor {
    private let nodes: [ASN1Node]
    private var index = 0
    private let what: String

    init(_ nodes: [ASN1Node], what: String) {
        self.nodes = nodes
        self.what = what
    }

    var isAtEnd: Bool { index >= nodes.count }

    /// The remaining elements (for SEQUENCE OF / SET OF).
    var remaining: ArraySlice<ASN1Node> { nodes[index...] }

    mutating func next(_ field: String) throws -> ASN1Node {
        guard index < nodes.count else { throw LDAPError.protocolError("\(what): missing \(field)") }
        defer { index += 1 }
        return nodes[index]
    }

    /// The next element if it has this tag (an OPTIONAL field), else nil without consuming.
    mutating func optional(_ identifier: ASN1Identifier) -> ASN1Node? {
        guard index < nodes.count, nodes[index].identifier == identifier else { return nil }
        defer { index += 1 }
        return nodes[index]
    }
}

extension DER.Serializer {
    mutating func appendOctets<Bytes: Collection>(_ bytes: Bytes, identifier: ASN1Identifier = .octetString)
    where Bytes.Element == UInt8 {
        appendPrimitiveNode(identifier: identifier) { $0.append(contentsOf: bytes) }
    }

    mutating func appendString(_ string: String, identifier: ASN1Identifier = .octetString) {
        appendOctets(Array(string.utf8), identifier: identifier)
    }

    /// Minimal two's complement, as BER and DER both require for INTEGER and ENUMERATED.
    mutating func appendInteger(_ value: Int64, identifier: ASN1Identifier = .integer) {
        appendPrimitiveNode(identifier: identifier) { out in
            var bytes: [UInt8] = []
            var remaining = value
            repeat {
                bytes.append(UInt8(truncatingIfNeeded: remaining))
                remaining >>= 8
            } while !(remaining == 0 && bytes[bytes.count - 1] < 0x80) && !(remaining == -1 && bytes[bytes.count - 1] >= 0x80)
            out.append(contentsOf: bytes.reversed())
        }
    }

    mutating func appendBoolean(_ value: Bool, identifier: ASN1Identifier = .boolean) {
        appendPrimitiveNode(identifier: identifier) { $0.append(value ? 0xFF : 0x00) }
    }
}
