import Foundation
import XMLStream
import XMPPCore

/// A room's configuration (XEP-0045 §10.2, the `muc#roomconfig` form), stored as JSON.
struct MUCRoomConfiguration: Codable, Hashable, Sendable {
    var name = ""
    var description = ""
    var persistent = false
    /// Listed in the service's disco#items.
    var isPublic = true
    var membersOnly = false
    var moderated = false
    /// Nil: no password.
    var password: String?
    /// Everyone sees occupants' real JIDs (`whois` = anyone); the enterprise default. Otherwise
    /// only moderators do (semi-anonymous).
    var nonAnonymous = true
    var maxUsers: Int
    var allowInvites = true
    /// Participants may change the subject (moderators always may).
    var changeSubject = true
    /// Messages sent to a new occupant as history (at most the service's `max_history`).
    var historyLength: Int
    /// Messages are archived (XEP-0313 on the room JID).
    var archiving = true
    /// Secret key of the room's XEP-0421 occupant ids (base64), kept with the configuration so
    /// the ids stay stable across restarts. Not part of the form.
    var occupantIDKey: String?

    init(maxUsers: Int, historyLength: Int) {
        self.maxUsers = maxUsers
        self.historyLength = historyLength
    }

    static let formType = "http://jabber.org/protocol/muc#roomconfig"
    static let longestText = 1024
    static let longestPassword = 256

    /// The form an owner fills in (XEP-0045 §10.2).
    func form(maxUsersCap: Int, historyCap: Int) -> XMLElement {
        var form = XMLElement("x", xmlns: NS.dataForms, ["type": "form"])
        form.append(XMLElement("title", xmlns: NS.dataForms).withText("Room configuration"))
        func field(_ name: String, _ type: String, _ label: String, _ values: [String], options: [(String, String)] = []) {
            var field = XMLElement("field", xmlns: NS.dataForms, ["var": name, "type": type, "label": label])
            for value in values { field.append(XMLElement("value", xmlns: NS.dataForms).withText(value)) }
            for (label, value) in options {
                var option = XMLElement("option", xmlns: NS.dataForms, ["label": label])
                option.append(XMLElement("value", xmlns: NS.dataForms).withText(value))
                field.append(option)
            }
            form.append(field)
        }
        func bool(_ value: Bool) -> String { value ? "1" : "0" }
        field("FORM_TYPE", "hidden", "", [Self.formType])
        field("muc#roomconfig_roomname", "text-single", "Room name", [name])
        field("muc#roomconfig_roomdesc", "text-single", "Description", [description])
        field("muc#roomconfig_persistentroom", "boolean", "Keep the room when the last occupant leaves", [bool(persistent)])
        field("muc#roomconfig_publicroom", "boolean", "List the room in the directory", [bool(isPublic)])
        field("muc#roomconfig_membersonly", "boolean", "Only members may enter", [bool(membersOnly)])
        field("muc#roomconfig_moderatedroom", "boolean", "Only participants with voice may speak", [bool(moderated)])
        field("muc#roomconfig_passwordprotectedroom", "boolean", "Password required to enter", [bool(password != nil)])
        field("muc#roomconfig_roomsecret", "text-private", "Password", password.map { [$0] } ?? [])
        field(
            "muc#roomconfig_whois", "list-single", "Who may see real addresses", [nonAnonymous ? "anyone" : "moderators"],
            options: [("Moderators only", "moderators"), ("Anyone", "anyone")])
        field("muc#roomconfig_maxusers", "text-single", "Most occupants (at most \(maxUsersCap))", [String(maxUsers)])
        field("muc#roomconfig_allowinvites", "boolean", "Occupants may invite others", [bool(allowInvites)])
        field("muc#roomconfig_changesubject", "boolean", "Occupants may change the subject", [bool(changeSubject)])
        field("muc#roomconfig_historylength", "text-single", "Messages of history for newcomers (at most \(historyCap))", [String(historyLength)])
        field("muc#roomconfig_enablearchiving", "boolean", "Archive messages (message archive on the room)", [bool(archiving)])
        return form
    }

    /// Applies a submitted form. Unknown fields are ignored (XEP-0004); bad values are refused.
    mutating func apply(_ form: XMLElement, maxUsersCap: Int, historyCap: Int) throws(StanzaError) {
        var next = self
        var passwordProtected: Bool?
        var secret: String?
        for field in form.elements where field.name == "field" {
            guard let name = field[attribute: "var"] else { continue }
            let values = field.elements.filter { $0.name == "value" }.map(\.text)
            let value = values.first ?? ""
            func boolean() throws(StanzaError) -> Bool {
                switch value {
                case "1", "true": return true
                case "0", "false": return false
                default: throw StanzaError(.notAcceptable, text: "\(name) must be a boolean")
                }
            }
            func number(_ range: ClosedRange<Int>) throws(StanzaError) -> Int {
                guard let number = Int(value.trimmingCharacters(in: .whitespaces)), range.contains(number) else {
                    throw StanzaError(.notAcceptable, text: "\(name) must be a number from \(range.lowerBound) to \(range.upperBound)")
                }
                return number
            }
            func text(_ limit: Int) throws(StanzaError) -> String {
                guard value.count <= limit else { throw StanzaError(.notAcceptable, text: "\(name) is longer than \(limit) characters") }
                return value
            }
            switch name {
            case "FORM_TYPE":
                guard value == Self.formType else { throw StanzaError(.badRequest, text: "not a muc#roomconfig form") }
            case "muc#roomconfig_roomname": next.name = try text(Self.longestText)
            case "muc#roomconfig_roomdesc": next.description = try text(Self.longestText)
            case "muc#roomconfig_persistentroom": next.persistent = try boolean()
            case "muc#roomconfig_publicroom": next.isPublic = try boolean()
            case "muc#roomconfig_membersonly": next.membersOnly = try boolean()
            case "muc#roomconfig_moderatedroom": next.moderated = try boolean()
            case "muc#roomconfig_passwordprotectedroom": passwordProtected = try boolean()
            case "muc#roomconfig_roomsecret": secret = try text(Self.longestPassword)
            case "muc#roomconfig_whois":
                switch value {
                case "anyone": next.nonAnonymous = true
                case "moderators": next.nonAnonymous = false
                default: throw StanzaError(.notAcceptable, text: "whois is 'anyone' or 'moderators'")
                }
            case "muc#roomconfig_maxusers":
                next.maxUsers = value == "none" || value.isEmpty ? maxUsersCap : try number(1...maxUsersCap)
            case "muc#roomconfig_allowinvites": next.allowInvites = try boolean()
            case "muc#roomconfig_changesubject": next.changeSubject = try boolean()
            case "muc#roomconfig_historylength", "muc#maxhistoryfetch": next.historyLength = try number(0...historyCap)
            case "muc#roomconfig_enablearchiving", "muc#roomconfig_enablelogging", "mam": next.archiving = try boolean()
            default: continue
            }
        }
        switch (passwordProtected, secret) {
        case (false?, _): next.password = nil
        case (true?, let secret?) where !secret.isEmpty: next.password = secret
        case (true?, _): throw StanzaError(.notAcceptable, text: "a password-protected room needs a password")
        case (nil, let secret?): next.password = secret.isEmpty ? nil : secret
        case (nil, nil): break
        }
        self = next
    }

    /// XEP-0045 §15.6 disco#info features describing the configuration.
    var features: [String] {
        [
            persistent ? "muc_persistent" : "muc_temporary",
            membersOnly ? "muc_membersonly" : "muc_open",
            moderated ? "muc_moderated" : "muc_unmoderated",
            nonAnonymous ? "muc_nonanonymous" : "muc_semianonymous",
            password != nil ? "muc_passwordprotected" : "muc_unsecured",
            isPublic ? "muc_public" : "muc_hidden",
        ]
    }
}
