import Foundation
import SwitchboardTestSupport

/// The committed company.ldif, read independently of the client so tests can compare what
/// slapd returns with what the file holds.
struct CompanyLDIF {
    struct Entry {
        let dn: String
        let attributes: [String: [String]]  // lower-cased names

        func values(_ name: String) -> [String] { attributes[name.lowercased()] ?? [] }
        var isPerson: Bool { values("objectClass").contains("inetOrgPerson") }
    }

    let entries: [Entry]

    static let shared: CompanyLDIF = {
        guard let text = try? String(contentsOf: SlapdServer.companyLDIF, encoding: .utf8) else {
            fatalError("cannot read \(SlapdServer.companyLDIF.path)")
        }
        return CompanyLDIF(text: text)
    }()

    init(text: String) {
        var entries: [Entry] = []
        for record in text.components(separatedBy: "\n\n") {
            var dn: String?
            var attributes: [String: [String]] = [:]
            for line in record.split(separator: "\n") where !line.hasPrefix("#") {
                guard let colon = line.firstIndex(of: ":") else { continue }
                let name = String(line[..<colon])
                var value: String
                let rest = line[line.index(after: colon)...]
                if rest.hasPrefix(":") {
                    let encoded = rest.dropFirst().trimmingCharacters(in: .whitespaces)
                    value = Data(base64Encoded: encoded).map { String(decoding: $0, as: UTF8.self) } ?? ""
                } else {
                    value = rest.trimmingCharacters(in: .whitespaces)
                }
                if name == "dn" { dn = value } else { attributes[name.lowercased(), default: []].append(value) }
            }
            if let dn { entries.append(Entry(dn: dn, attributes: attributes)) }
        }
        self.entries = entries
    }

    var people: [Entry] { entries.filter(\.isPerson) }
    var departmentPeople: [Entry] { people.filter { $0.dn.hasSuffix(",ou=Departments,dc=example,dc=com") } }
    func person(uid: String) -> Entry? { people.first { $0.values("uid") == [uid] } }
}
