import Foundation

/// Internal implementation of the parts of the PRECIS framework (RFC 8264) and
/// its profiles (RFC 8265 UsernameCaseMapped / OpaqueString) plus the IDNA2008
/// code point rules (RFC 5892) that JIDs and SASL passwords need.
///
/// Everything here is the *slow path*: callers handle pure-ASCII input
/// themselves and only come here for strings containing non-ASCII scalars.
/// Unicode character properties come from the Swift standard library
/// (`Unicode.Scalar.Properties`); only normalisation uses Foundation.
enum PRECIS {
    /// Why a string was rejected by a PRECIS profile.
    enum Failure: Error, Hashable, Sendable {
        case empty
        case tooLong
        case disallowedCharacter
    }

    /// The longest a prepared localpart, domainpart or resourcepart may be, in UTF-8 bytes.
    static let maximumPartLength = 1023

    // MARK: - Profiles

    /// Applies the UsernameCaseMapped profile (RFC 8265 §3.3) as used for JID
    /// localparts (RFC 7622 §3.3): width mapping, lowercase, NFC, then the
    /// IdentifierClass check plus the localpart's extra forbidden characters.
    static func usernameCaseMapped(_ input: String) throws(Failure) -> String {
        let widthMapped = widthMap(input)
        let lowered = widthMapped.lowercased()
        let normalized = lowered.precomposedStringWithCanonicalMapping
        let scalars = Array(normalized.unicodeScalars)
        guard !scalars.isEmpty else { throw .empty }
        for index in scalars.indices {
            let scalar = scalars[index]
            if scalar.isASCII {
                guard isAllowedASCIIInLocalpart(UInt8(truncatingIfNeeded: scalar.value)) else {
                    throw .disallowedCharacter
                }
                continue
            }
            switch derivedProperty(scalar) {
            case .pvalid:
                continue
            case .contextJ, .contextO:
                guard contextRuleSatisfied(scalars, at: index) else { throw .disallowedCharacter }
            case .freePVal, .disallowed:
                throw .disallowedCharacter
            }
        }
        guard normalized.utf8.count <= maximumPartLength else { throw .tooLong }
        return normalized
    }

    /// Applies the OpaqueString profile (RFC 8265 §4.2) as used for JID
    /// resourceparts (RFC 7622 §3.4) and passwords (RFC 6120 §6.3.8):
    /// non-ASCII spaces map to U+0020, NFC, then the FreeformClass check.
    ///
    /// - Parameter maximumLength: a UTF-8 byte limit, or `nil` for none.
    static func opaqueString(_ input: String, maximumLength: Int?) throws(Failure) -> String {
        var mapped = String.UnicodeScalarView()
        for scalar in input.unicodeScalars {
            if !scalar.isASCII && scalar.properties.generalCategory == .spaceSeparator {
                mapped.append(" ")
            } else {
                mapped.append(scalar)
            }
        }
        let normalized = String(mapped).precomposedStringWithCanonicalMapping
        let scalars = Array(normalized.unicodeScalars)
        guard !scalars.isEmpty else { throw .empty }
        for index in scalars.indices {
            let scalar = scalars[index]
            if scalar.isASCII {
                guard scalar.value >= 0x20 && scalar.value < 0x7F else { throw .disallowedCharacter }
                continue
            }
            switch derivedProperty(scalar) {
            case .pvalid, .freePVal:
                continue
            case .contextJ, .contextO:
                guard contextRuleSatisfied(scalars, at: index) else { throw .disallowedCharacter }
            case .disallowed:
                throw .disallowedCharacter
            }
        }
        if let maximumLength, normalized.utf8.count > maximumLength { throw .tooLong }
        return normalized
    }

    /// RFC 5895-style mapping for a non-ASCII domainpart: width mapping,
    /// lowercase, NFC and ideographic full stops mapped to ".".
    static func mapDomain(_ input: String) -> String {
        let lowered = widthMap(input).lowercased()
        let normalized = lowered.precomposedStringWithCanonicalMapping
        guard normalized.unicodeScalars.contains(where: { $0.value == 0x3002 }) else { return normalized }
        var view = String.UnicodeScalarView()
        for scalar in normalized.unicodeScalars {
            view.append(scalar.value == 0x3002 ? "." : scalar)
        }
        return String(view)
    }

    // MARK: - Mappings

    /// The PRECIS width mapping rule: fullwidth and halfwidth characters are
    /// mapped to their decomposition mappings (`<wide>`/`<narrow>`), which in
    /// Unicode are exactly U+3000 and U+FF01...U+FFEE.
    static func widthMap(_ input: String) -> String {
        guard input.unicodeScalars.contains(where: { $0.value == 0x3000 || (0xFF01...0xFFEE).contains($0.value) }) else {
            return input
        }
        var view = String.UnicodeScalarView()
        for scalar in input.unicodeScalars {
            switch scalar.value {
            case 0xFF01...0xFF5E:
                view.append(Unicode.Scalar(UInt8(truncatingIfNeeded: scalar.value - 0xFEE0)))
            case 0x3000:
                view.append(" ")
            case 0xFF5F...0xFFEE:
                // Halfwidth Katakana/Hangul and the remaining fullwidth signs: the
                // compatibility decomposition of a single scalar in this block is its
                // <wide>/<narrow> mapping.
                let decomposed = String(Character(scalar)).precomposedStringWithCompatibilityMapping
                view.append(contentsOf: decomposed.unicodeScalars)
            default:
                view.append(scalar)
            }
        }
        return String(view)
    }

    // MARK: - Derived property (RFC 8264 §8)

    enum Property: Hashable {
        /// Allowed in both string classes.
        case pvalid
        /// Disallowed in IdentifierClass, allowed in FreeformClass.
        case freePVal
        /// Allowed if the CONTEXTJ rule holds.
        case contextJ
        /// Allowed if the CONTEXTO rule holds.
        case contextO
        /// Never allowed (includes unassigned code points).
        case disallowed
    }

    /// The PRECIS derived property of a non-ASCII scalar.
    static func derivedProperty(_ scalar: Unicode.Scalar) -> Property {
        if let exception = exceptionProperty(scalar) { return exception }
        if scalar.isASCII {
            return (0x21...0x7E).contains(scalar.value) ? .pvalid : (scalar.value == 0x20 ? .freePVal : .disallowed)
        }
        let properties = scalar.properties
        let category = properties.generalCategory
        if category == .unassigned { return .disallowed }
        if properties.isJoinControl { return .contextJ }
        if isOldHangulJamo(scalar) { return .disallowed }
        if properties.isDefaultIgnorableCodePoint || properties.isNoncharacterCodePoint { return .disallowed }
        if category == .control { return .disallowed }
        if hasCompatibilityMapping(scalar) { return .freePVal }
        switch category {
        case .lowercaseLetter, .uppercaseLetter, .otherLetter, .decimalNumber, .modifierLetter,
             .nonspacingMark, .spacingMark:
            return .pvalid
        case .titlecaseLetter, .letterNumber, .otherNumber, .enclosingMark:
            return .freePVal
        case .spaceSeparator:
            return .freePVal
        case .mathSymbol, .currencySymbol, .modifierSymbol, .otherSymbol:
            return .freePVal
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation:
            return .freePVal
        default:
            return .disallowed
        }
    }

    /// Whether a non-ASCII scalar may appear in an IDNA2008 U-label (RFC 5892 §3).
    static func idnaProperty(_ scalar: Unicode.Scalar) -> Property {
        if let exception = exceptionProperty(scalar) { return exception }
        let properties = scalar.properties
        let category = properties.generalCategory
        if category == .unassigned { return .disallowed }
        if properties.isJoinControl { return .contextJ }
        // Unstable: NFKC_Casefold(cp) != cp.
        if properties.changesWhenNFKCCaseFolded { return .disallowed }
        // IgnorableProperties.
        if properties.isDefaultIgnorableCodePoint || properties.isWhitespace || properties.isNoncharacterCodePoint {
            return .disallowed
        }
        // IgnorableBlocks: Combining Diacritical Marks for Symbols, Musical Symbols.
        switch scalar.value {
        case 0x20D0...0x20FF, 0x1D100...0x1D24F: return .disallowed
        default: break
        }
        if isOldHangulJamo(scalar) { return .disallowed }
        switch category {
        case .lowercaseLetter, .uppercaseLetter, .otherLetter, .decimalNumber, .modifierLetter,
             .nonspacingMark, .spacingMark:
            return .pvalid
        default:
            return .disallowed
        }
    }

    /// RFC 5892 §2.6 Exceptions.
    private static func exceptionProperty(_ scalar: Unicode.Scalar) -> Property? {
        switch scalar.value {
        case 0x00DF, 0x03C2, 0x06FD, 0x06FE, 0x0F0B, 0x3007:
            return .pvalid
        case 0x00B7, 0x0375, 0x05F3, 0x05F4, 0x30FB, 0x0660...0x0669, 0x06F0...0x06F9:
            return .contextO
        case 0x0640, 0x07FA, 0x302E, 0x302F, 0x3031...0x3035, 0x303B:
            return .disallowed
        default:
            return nil
        }
    }

    /// Conjoining Hangul Jamo (Hangul_Syllable_Type L, V or T).
    private static func isOldHangulJamo(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x1100...0x11FF, 0xA960...0xA97F, 0xD7B0...0xD7FF: return true
        default: return false
        }
    }

    /// HasCompat (RFC 8264 §9.17): toNFKC(cp) != cp.
    private static func hasCompatibilityMapping(_ scalar: Unicode.Scalar) -> Bool {
        // NFKC_Casefold(cp) == cp implies NFKC(cp) == cp, so the stdlib property
        // rules out almost everything without touching Foundation.
        guard scalar.properties.changesWhenNFKCCaseFolded else { return false }
        let nfkc = String(Character(scalar)).precomposedStringWithCompatibilityMapping.unicodeScalars
        return !(nfkc.count == 1 && nfkc.first == scalar)
    }

    // MARK: - Contextual rules (RFC 5892 Appendix A)

    /// Evaluates the CONTEXTJ/CONTEXTO rule of `scalars[index]`.
    ///
    /// ZERO WIDTH (NON-)JOINER is accepted only after a virama; the Arabic
    /// joining-type alternative of RFC 5892 A.1 is not implemented (such
    /// strings are rejected). Script tests use block ranges.
    static func contextRuleSatisfied(_ scalars: [Unicode.Scalar], at index: Int) -> Bool {
        let scalar = scalars[index]
        let before: Unicode.Scalar? = index > 0 ? scalars[index - 1] : nil
        let after: Unicode.Scalar? = index + 1 < scalars.count ? scalars[index + 1] : nil
        switch scalar.value {
        case 0x200C, 0x200D:
            guard let before else { return false }
            return before.properties.canonicalCombiningClass == .virama
        case 0x00B7:
            return before?.value == 0x006C && after?.value == 0x006C
        case 0x0375:
            guard let after else { return false }
            return isGreek(after)
        case 0x05F3, 0x05F4:
            guard let before else { return false }
            return isHebrew(before)
        case 0x30FB:
            return scalars.contains { isHiraganaKatakanaOrHan($0) }
        case 0x0660...0x0669:
            return !scalars.contains { (0x06F0...0x06F9).contains($0.value) }
        case 0x06F0...0x06F9:
            return !scalars.contains { (0x0660...0x0669).contains($0.value) }
        default:
            return false
        }
    }

    private static func isGreek(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x0370...0x03E1, 0x03F0...0x03FF, 0x1D26...0x1D2A, 0x1F00...0x1FFE, 0x10140...0x1018E: return true
        default: return false
        }
    }

    private static func isHebrew(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x0591...0x05F4, 0xFB1D...0xFB4F: return true
        default: return false
        }
    }

    private static func isHiraganaKatakanaOrHan(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x30FB, 0x30FC: return false  // Script=Common
        case 0x3041...0x309F, 0x30A0...0x30FF, 0x31F0...0x31FF, 0x32D0...0x32FE, 0x3300...0x3357,
             0xFF66...0xFF9D, 0x1B000...0x1B16F:
            return true
        case 0x2E80...0x2FDF, 0x3005, 0x3007, 0x3021...0x3029, 0x3038...0x303B:
            return true
        default:
            return scalar.properties.isUnifiedIdeograph || scalar.properties.isIdeographic
        }
    }

    // MARK: - ASCII helpers

    /// Whether a printable ASCII byte may appear in a localpart: PRECIS
    /// IdentifierClass (U+0021...U+007E) minus RFC 7622 §3.3.1's `" & ' / : < > @`.
    @inline(__always)
    static func isAllowedASCIIInLocalpart(_ byte: UInt8) -> Bool {
        switch byte {
        case 0x22, 0x26, 0x27, 0x2F, 0x3A, 0x3C, 0x3E, 0x40: return false
        case 0x21...0x7E: return true
        default: return false
        }
    }
}
