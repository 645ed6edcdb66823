import Foundation
import NIOConcurrencyHelpers

/// Romanisation of Chinese names for search: "张伟" → ["zhang", "wei"], so "zhangwei" and "zw" find it.
///
/// Foundation's ICU transliterator gives each Han character its Mandarin reading. Whole strings
/// cost ~26 µs each (1.3 s for 50,000 names), single characters are cached, so indexing 50,000
/// names costs ~20 ms. Per-character readings miss the context a word gives, which matters
/// for a few surnames that are read differently as names (曾 zeng, 单 shan …): for the first
/// character those readings are added as alternatives.
public enum Pinyin {
    private static let cache = NIOLockedValueBox<[Character: String]>([:])

    /// Surnames whose reading as a family name differs from the common reading.
    private static let surnameReadings: [Character: String] = [
        "曾": "zeng", "单": "shan", "解": "xie", "仇": "qiu", "区": "ou", "朴": "piao", "查": "zha",
        "乐": "yue", "覃": "qin", "尉": "yu", "盖": "ge", "翟": "zhai", "缪": "miao", "召": "shao",
        "长": "chang", "重": "chong", "种": "chong", "秘": "bi", "宁": "ning", "么": "yao",
    ]

    /// Whether the character is a CJK ideograph (the ranges names use).
    public static func isHan(_ character: Character) -> Bool {
        guard let scalar = character.unicodeScalars.first else { return false }
        switch scalar.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0xF900...0xFAFF: return true
        default: return false
        }
    }

    /// The reading of one Han character, lower-case ASCII without tones ("" if unknown).
    public static func reading(_ character: Character) -> String {
        if let cached = cache.withLockedValue({ $0[character] }) { return cached }
        let latin = String(character).applyingTransform(.mandarinToLatin, reverse: false)?
            .applyingTransform(.stripDiacritics, reverse: false)?.lowercased() ?? ""
        let reading = String(latin.unicodeScalars.filter { $0.isASCII && $0.properties.isAlphabetic })
        cache.withLockedValue { $0[character] = reading }
        return reading
    }

    /// Syllables of a name: one per Han character, other runs of letters/digits as one word each.
    public static func syllables(_ text: String) -> [String] {
        var result: [String] = []
        var word = ""
        for character in text {
            if isHan(character) {
                if !word.isEmpty { result.append(word.lowercased()); word = "" }
                let reading = reading(character)
                if !reading.isEmpty { result.append(reading) }
            } else if character.isLetter || character.isNumber {
                word.append(character)
            } else if !word.isEmpty {
                result.append(word.lowercased())
                word = ""
            }
        }
        if !word.isEmpty { result.append(word.lowercased()) }
        return result
    }

    /// Search keys for a name: full pinyin and initials ("zhangwei", "zw"), plus the
    /// surname-reading variants when the first character has one.
    public static func keys(_ name: String) -> [String] {
        guard name.contains(where: isHan) else { return [] }
        let parts = syllables(name)
        guard !parts.isEmpty else { return [] }
        var keys = [parts.joined(), String(parts.compactMap(\.first))]
        if let first = name.first, let surname = surnameReadings[first], surname != parts[0] {
            var alternative = parts
            alternative[0] = surname
            keys.append(alternative.joined())
            keys.append(String(alternative.compactMap(\.first)))
        }
        return keys
    }
}
