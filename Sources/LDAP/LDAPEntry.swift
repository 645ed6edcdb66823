/// One search result entry: its DN and attributes, with values kept as raw bytes.
///
/// Attribute names are matched case-insensitively (`entry["Mail"]` finds `mail`). Values are
/// `[UInt8]` so binary attributes (Active Directory's `objectGUID`, `jpegPhoto`) survive intact;
/// the `String` accessors decode UTF-8 for the common case.
public struct LDAPEntry: Sendable, Hashable, CustomStringConvertible {
    /// One attribute as the server sent it: its description (name plus options) and values.
    public struct Attribute: Sendable, Hashable {
        public var name: String
        public var values: [[UInt8]]

        public init(name: String, values: [[UInt8]]) {
            self.name = name
            self.values = values
        }

        public init(name: String, strings: [String]) {
            self.init(name: name, values: strings.map { Array($0.utf8) })
        }

        public var stringValues: [String] { values.map { String(decoding: $0, as: UTF8.self) } }
    }

    public var dn: String
    /// In the server's order.
    public private(set) var attributes: [Attribute]
    private var index: [String: Int]

    public init(dn: String, attributes: [Attribute]) {
        self.dn = dn
        self.attributes = []
        self.index = [:]
        for attribute in attributes { append(attribute) }
    }

    /// Adds values; a repeated name (in any case) is merged into the existing attribute.
    public mutating func append(_ attribute: Attribute) {
        let key = Self.key(attribute.name)
        if let position = index[key] {
            attributes[position].values.append(contentsOf: attribute.values)
        } else {
            index[key] = attributes.count
            attributes.append(attribute)
        }
    }

    /// Raw values of an attribute (empty when absent).
    public func values(_ name: String) -> [[UInt8]] {
        index[Self.key(name)].map { attributes[$0].values } ?? []
    }

    /// UTF-8 values of an attribute (empty when absent).
    public subscript(_ name: String) -> [String] {
        values(name).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The first UTF-8 value of an attribute.
    public func first(_ name: String) -> String? {
        values(name).first.map { String(decoding: $0, as: UTF8.self) }
    }

    /// The first raw value of an attribute.
    public func firstValue(_ name: String) -> [UInt8]? { values(name).first }

    public func contains(_ name: String) -> Bool { index[Self.key(name)] != nil }

    public var description: String {
        "LDAPEntry(\(dn), \(attributes.map { "\($0.name): \($0.values.count)" }.joined(separator: ", ")))"
    }

    public static func == (lhs: LDAPEntry, rhs: LDAPEntry) -> Bool {
        lhs.dn == rhs.dn && lhs.attributes == rhs.attributes
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(dn)
        hasher.combine(attributes)
    }

    /// Attribute descriptions are ASCII (RFC 4512 §2.5); folding ASCII only is exact and cheap.
    private static func key(_ name: String) -> String {
        String(decoding: name.utf8.map { $0 >= 0x41 && $0 <= 0x5A ? $0 + 0x20 : $0 }, as: UTF8.self)
    }
}
