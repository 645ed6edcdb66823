import Foundation

/// An XMPP address (RFC 7622): `[localpart@]domainpart[/resourcepart]`.
///
/// All three parts are stored in their prepared, canonical form, so two JIDs
/// that denote the same entity compare equal:
/// - the localpart is enforced with the PRECIS UsernameCaseMapped profile
///   (width mapping, lowercase, NFC, IdentifierClass, minus `" & ' / : < > @`);
/// - the domainpart is lowercased, width-mapped and NFC-normalised, a final
///   dot is removed, and A-labels (`xn--…`) are converted to U-labels;
///   bracketed IPv6 literals (`[::1]`) are accepted;
/// - the resourcepart is enforced with the OpaqueString profile (non-ASCII
///   spaces map to U+0020, NFC, FreeformClass) and keeps its case.
///
/// Each part is 1...1023 UTF-8 bytes. Pure-ASCII parts are handled by a
/// single scan over the UTF-8 bytes without touching Foundation; only
/// non-ASCII parts take the full Unicode path.
public struct JID: Hashable, Sendable, CustomStringConvertible, Codable {
    /// The prepared localpart ("user" in `user@example.com`), or `nil` if there is none.
    public let localpart: String?
    /// The prepared domainpart ("example.com" in `user@example.com`), always present.
    public let domainpart: String
    /// The prepared resourcepart ("phone" in `user@example.com/phone`), or `nil` for a bare JID.
    public let resourcepart: String?

    /// The longest a part may be, in UTF-8 bytes (RFC 7622 §3.2–3.4).
    public static let maximumPartLength = 1023

    /// Parses and prepares a JID string per RFC 7622 §3.1: everything after the
    /// first "/" is the resourcepart; of what remains, everything before the
    /// first "@" is the localpart (a second "@" is therefore always invalid).
    ///
    /// - Throws: a ``JIDError`` naming the first problem found.
    public init(_ string: String) throws(JIDError) {
        self = try JID.withUTF8(string) { buffer throws(JIDError) in try JID.parse(buffer) }
    }

    /// Builds a JID from separate parts, preparing each one exactly as
    /// ``init(_:)`` would. `nil` means the part is absent; an empty string is an error.
    ///
    /// - Throws: a ``JIDError`` naming the first problem found.
    public init(localpart: String?, domainpart: String, resourcepart: String?) throws(JIDError) {
        let preparedLocalpart: String?
        if let localpart {
            preparedLocalpart = try JID.withUTF8(localpart) { buffer throws(JIDError) in try JID.prepareLocalpart(buffer) }
        } else {
            preparedLocalpart = nil
        }
        let preparedDomainpart = try JID.withUTF8(domainpart) { buffer throws(JIDError) in try JID.prepareDomainpart(buffer) }
        let preparedResourcepart: String?
        if let resourcepart {
            preparedResourcepart = try JID.withUTF8(resourcepart) { buffer throws(JIDError) in try JID.prepareResourcepart(buffer) }
        } else {
            preparedResourcepart = nil
        }
        self.init(unchecked: preparedLocalpart, preparedDomainpart, preparedResourcepart)
    }

    private init(unchecked localpart: String?, _ domainpart: String, _ resourcepart: String?) {
        self.localpart = localpart
        self.domainpart = domainpart
        self.resourcepart = resourcepart
    }

    /// The same JID without its resourcepart.
    public var bare: JID {
        resourcepart == nil ? self : JID(unchecked: localpart, domainpart, nil)
    }

    /// Whether this JID has no resourcepart.
    public var isBare: Bool {
        resourcepart == nil
    }

    /// Returns the bare part of this JID with the given resourcepart, which is
    /// prepared with the OpaqueString profile.
    ///
    /// - Throws: ``JIDError/emptyResourcepart``, ``JIDError/resourcepartTooLong``
    ///   or ``JIDError/invalidResourcepartCharacter``.
    public func withResource(_ resourcepart: String) throws(JIDError) -> JID {
        let prepared = try JID.withUTF8(resourcepart) { buffer throws(JIDError) in try JID.prepareResourcepart(buffer) }
        return JID(unchecked: localpart, domainpart, prepared)
    }

    /// The canonical string form, `[localpart@]domainpart[/resourcepart]`.
    public var description: String {
        var result = ""
        result.reserveCapacity((localpart?.utf8.count ?? -1) + 1 + domainpart.utf8.count + (resourcepart?.utf8.count ?? -1) + 1)
        if let localpart {
            result.append(localpart)
            result.append("@")
        }
        result.append(domainpart)
        if let resourcepart {
            result.append("/")
            result.append(resourcepart)
        }
        return result
    }

    /// The domainpart with every U-label converted to its A-label ("xn--…"),
    /// as needed for DNS look-ups. Equal to ``domainpart`` when that is ASCII.
    public var asciiDomainpart: String {
        guard domainpart.utf8.contains(where: { $0 >= 0x80 }) else { return domainpart }
        var labels: [String] = []
        for label in domainpart.split(separator: ".", omittingEmptySubsequences: false) {
            if label.utf8.contains(where: { $0 >= 0x80 }), let encoded = Punycode.encode(Array(label.unicodeScalars)) {
                labels.append("xn--" + String(decoding: encoded, as: UTF8.self))
            } else {
                labels.append(String(label))
            }
        }
        return labels.joined(separator: ".")
    }

    // MARK: Codable

    /// Decodes a JID from a single string value, preparing it like ``init(_:)``.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let string = try container.decode(String.self)
        do {
            try self.init(string)
        } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "Invalid JID \"\(string)\": \(error)")
        }
    }

    /// Encodes the JID as its canonical string.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

// MARK: - Parsing

extension JID {
    private static func withUTF8<T>(
        _ string: String,
        _ body: (UnsafeBufferPointer<UInt8>) throws(JIDError) -> T
    ) throws(JIDError) -> T {
        var string = string
        let result: Result<T, JIDError> = string.withUTF8 { buffer in
            do throws(JIDError) {
                return .success(try body(buffer))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    private static func parse(_ buffer: UnsafeBufferPointer<UInt8>) throws(JIDError) -> JID {
        let count = buffer.count
        var slash = count
        var at = -1
        var index = 0
        while index < count {
            let byte = buffer[index]
            if byte == UInt8(ascii: "/") {
                slash = index
                break
            }
            if byte == UInt8(ascii: "@") && at < 0 {
                at = index
            }
            index += 1
        }
        let localpart: String?
        if at >= 0 {
            localpart = try prepareLocalpart(UnsafeBufferPointer(rebasing: buffer[0..<at]))
        } else {
            localpart = nil
        }
        let domainpart = try prepareDomainpart(UnsafeBufferPointer(rebasing: buffer[(at + 1)..<slash]))
        let resourcepart: String?
        if slash < count {
            resourcepart = try prepareResourcepart(UnsafeBufferPointer(rebasing: buffer[(slash + 1)..<count]))
        } else {
            resourcepart = nil
        }
        return JID(unchecked: localpart, domainpart, resourcepart)
    }

    @inline(__always)
    private static func isASCIIUppercase(_ byte: UInt8) -> Bool {
        byte &- UInt8(ascii: "A") < 26
    }

    private static func asciiLowercased(_ bytes: UnsafeBufferPointer<UInt8>) -> String {
        String(unsafeUninitializedCapacity: bytes.count) { output in
            for index in 0..<bytes.count {
                let byte = bytes[index]
                output[index] = isASCIIUppercase(byte) ? byte | 0x20 : byte
            }
            return bytes.count
        }
    }

    // MARK: Localpart

    static func prepareLocalpart(_ bytes: UnsafeBufferPointer<UInt8>) throws(JIDError) -> String {
        guard !bytes.isEmpty else { throw .emptyLocalpart }
        var hasUppercase = false
        for byte in bytes {
            if byte >= 0x80 {
                return try prepareLocalpartSlow(String(decoding: bytes, as: UTF8.self))
            }
            guard PRECIS.isAllowedASCIIInLocalpart(byte) else { throw .invalidLocalpartCharacter }
            if isASCIIUppercase(byte) { hasUppercase = true }
        }
        guard bytes.count <= maximumPartLength else { throw .localpartTooLong }
        return hasUppercase ? asciiLowercased(bytes) : String(decoding: bytes, as: UTF8.self)
    }

    static func prepareLocalpartSlow(_ string: String) throws(JIDError) -> String {
        do throws(PRECIS.Failure) {
            return try PRECIS.usernameCaseMapped(string)
        } catch {
            switch error {
            case .empty: throw .emptyLocalpart
            case .tooLong: throw .localpartTooLong
            case .disallowedCharacter: throw .invalidLocalpartCharacter
            }
        }
    }

    // MARK: Resourcepart

    static func prepareResourcepart(_ bytes: UnsafeBufferPointer<UInt8>) throws(JIDError) -> String {
        guard !bytes.isEmpty else { throw .emptyResourcepart }
        for byte in bytes {
            if byte >= 0x80 {
                return try prepareResourcepartSlow(String(decoding: bytes, as: UTF8.self))
            }
            guard byte >= 0x20 && byte != 0x7F else { throw .invalidResourcepartCharacter }
        }
        guard bytes[0] != 0x20 && bytes[bytes.count - 1] != 0x20 else { throw .invalidResourcepartCharacter }
        guard bytes.count <= maximumPartLength else { throw .resourcepartTooLong }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func prepareResourcepartSlow(_ string: String) throws(JIDError) -> String {
        let prepared: String
        do throws(PRECIS.Failure) {
            prepared = try PRECIS.opaqueString(string, maximumLength: maximumPartLength)
        } catch {
            switch error {
            case .empty: throw .emptyResourcepart
            case .tooLong: throw .resourcepartTooLong
            case .disallowedCharacter: throw .invalidResourcepartCharacter
            }
        }
        guard prepared.utf8.first != 0x20 && prepared.utf8.last != 0x20 else { throw .invalidResourcepartCharacter }
        return prepared
    }

    // MARK: Domainpart

    @inline(__always)
    private static func isLDHOrUnderscore(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "_"):
            return true
        default:
            return false
        }
    }

    /// Whether `bytes[start...]` begins with "xn--", case-insensitively.
    @inline(__always)
    private static func hasACEPrefix(_ bytes: UnsafeBufferPointer<UInt8>, at start: Int, end: Int) -> Bool {
        end - start >= 4
            && bytes[start] | 0x20 == UInt8(ascii: "x")
            && bytes[start + 1] | 0x20 == UInt8(ascii: "n")
            && bytes[start + 2] == UInt8(ascii: "-")
            && bytes[start + 3] == UInt8(ascii: "-")
    }

    static func prepareDomainpart(_ input: UnsafeBufferPointer<UInt8>) throws(JIDError) -> String {
        var bytes = input
        if let last = bytes.last, last == UInt8(ascii: ".") {
            bytes = UnsafeBufferPointer(rebasing: bytes.dropLast())
        }
        guard !bytes.isEmpty else { throw .emptyDomain }
        if bytes[0] == UInt8(ascii: "[") {
            return try prepareIPLiteral(bytes)
        }
        var hasUppercase = false
        var hasALabel = false
        var labelStart = 0
        var index = 0
        let count = bytes.count
        while index < count {
            let byte = bytes[index]
            if byte == UInt8(ascii: ".") {
                let length = index - labelStart
                guard length >= 1 && length <= 63 else { throw .invalidDomainLabel }
                if hasACEPrefix(bytes, at: labelStart, end: index) { hasALabel = true }
                labelStart = index + 1
            } else if isASCIIUppercase(byte) {
                hasUppercase = true
            } else if !isLDHOrUnderscore(byte) {
                if byte >= 0x80 {
                    return try prepareDomainpartSlow(String(decoding: bytes, as: UTF8.self))
                }
                throw .invalidDomainCharacter
            }
            index += 1
        }
        let length = count - labelStart
        guard length >= 1 && length <= 63 else { throw .invalidDomainLabel }
        if hasACEPrefix(bytes, at: labelStart, end: count) { hasALabel = true }
        guard count <= maximumPartLength else { throw .domainTooLong }
        let ascii = hasUppercase ? asciiLowercased(bytes) : String(decoding: bytes, as: UTF8.self)
        return hasALabel ? try prepareDomainpartSlow(ascii) : ascii
    }

    /// The full IDNA path: map, split into labels, convert A-labels, validate U-labels.
    static func prepareDomainpartSlow(_ string: String) throws(JIDError) -> String {
        var mapped = PRECIS.mapDomain(string)
        if mapped.utf8.last == UInt8(ascii: ".") { mapped.removeLast() }
        guard !mapped.isEmpty else { throw .emptyDomain }
        if mapped.utf8.first == UInt8(ascii: "[") {
            return try withUTF8(mapped) { buffer throws(JIDError) in try prepareIPLiteral(buffer) }
        }
        var labels: [String] = []
        for label in mapped.split(separator: ".", omittingEmptySubsequences: false) {
            guard !label.isEmpty else { throw .invalidDomainLabel }
            if label.utf8.allSatisfy({ $0 < 0x80 }) {
                for byte in label.utf8 where !isLDHOrUnderscore(byte) { throw .invalidDomainCharacter }
                guard label.utf8.count <= 63 else { throw .invalidDomainLabel }
                if label.utf8.starts(with: "xn--".utf8) {
                    guard let decoded = Punycode.decode(label.utf8.dropFirst(4)),
                          decoded.contains(where: { !$0.isASCII }) else { throw .invalidDomainLabel }
                    let uLabel = String(String.UnicodeScalarView(decoded))
                    guard PRECIS.mapDomain(uLabel).unicodeScalars.elementsEqual(decoded) else { throw .invalidDomainLabel }
                    try validateULabel(decoded)
                    labels.append(uLabel)
                } else {
                    labels.append(String(label))
                }
            } else {
                let scalars = Array(label.unicodeScalars)
                try validateULabel(scalars)
                guard let encoded = Punycode.encode(scalars), encoded.count + 4 <= 63 else { throw .invalidDomainLabel }
                labels.append(String(label))
            }
        }
        let result = labels.joined(separator: ".")
        guard result.utf8.count <= maximumPartLength else { throw .domainTooLong }
        return result
    }

    /// Checks a (mapped) U-label against the IDNA2008 code point rules.
    private static func validateULabel(_ scalars: [Unicode.Scalar]) throws(JIDError) {
        guard let first = scalars.first else { throw .invalidDomainLabel }
        switch first.properties.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark: throw .invalidDomainLabel
        default: break
        }
        for index in scalars.indices {
            let scalar = scalars[index]
            if scalar.isASCII {
                guard isLDHOrUnderscore(UInt8(truncatingIfNeeded: scalar.value)) else { throw .invalidDomainCharacter }
                continue
            }
            switch PRECIS.idnaProperty(scalar) {
            case .pvalid:
                continue
            case .contextJ, .contextO:
                guard PRECIS.contextRuleSatisfied(scalars, at: index) else { throw .invalidDomainCharacter }
            case .freePVal, .disallowed:
                throw .invalidDomainCharacter
            }
        }
    }

    // MARK: IP literals

    /// Validates "[IPv6address]" (RFC 3986) and lowercases its hex digits.
    private static func prepareIPLiteral(_ bytes: UnsafeBufferPointer<UInt8>) throws(JIDError) -> String {
        guard bytes.count >= 4, bytes.count <= 47,
              bytes[0] == UInt8(ascii: "["), bytes[bytes.count - 1] == UInt8(ascii: "]") else {
            throw .invalidIPLiteral
        }
        let inner = Array(bytes[1..<(bytes.count - 1)])
        guard isValidIPv6(inner) else { throw .invalidIPLiteral }
        return asciiLowercased(bytes)
    }

    static func isValidIPv6(_ address: [UInt8]) -> Bool {
        let colon = UInt8(ascii: ":")
        var doubleColon: Int?
        var index = 0
        while index + 1 < address.count {
            if address[index] == colon && address[index + 1] == colon {
                guard doubleColon == nil else { return false }
                doubleColon = index
                index += 2
                continue
            }
            index += 1
        }
        if let doubleColon {
            guard let head = ipv6GroupCount(address[..<doubleColon], allowIPv4: false),
                  let tail = ipv6GroupCount(address[(doubleColon + 2)...], allowIPv4: true) else { return false }
            return head + tail <= 7
        }
        return ipv6GroupCount(address[...], allowIPv4: true) == 8
    }

    private static func ipv6GroupCount(_ part: ArraySlice<UInt8>, allowIPv4: Bool) -> Int? {
        if part.isEmpty { return 0 }
        let fields = part.split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
        var groups = 0
        for (position, field) in fields.enumerated() {
            if allowIPv4 && position == fields.count - 1 && field.contains(UInt8(ascii: ".")) {
                guard isValidIPv4(field) else { return nil }
                groups += 2
                continue
            }
            guard (1...4).contains(field.count), field.allSatisfy({ isHexDigit($0) }) else { return nil }
            groups += 1
        }
        return groups
    }

    private static func isValidIPv4(_ field: ArraySlice<UInt8>) -> Bool {
        let octets = field.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard octets.count == 4 else { return false }
        for octet in octets {
            guard (1...3).contains(octet.count) else { return false }
            var value = 0
            for digit in octet {
                guard digit >= UInt8(ascii: "0") && digit <= UInt8(ascii: "9") else { return false }
                value = value * 10 + Int(digit - UInt8(ascii: "0"))
            }
            guard value <= 255 else { return false }
        }
        return true
    }

    @inline(__always)
    private static func isHexDigit(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"), UInt8(ascii: "A")...UInt8(ascii: "F"):
            return true
        default:
            return false
        }
    }
}
