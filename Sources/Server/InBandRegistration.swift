import Foundation
import Storage
import XMLStream
import XMPPCore

/// XEP-0077 account creation before authentication, when `registration.enabled` is true.
enum InBandRegistration {
    static func handle(_ iq: XMLElement, server: ServerContext, secure: Bool) async throws -> XMLElement {
        guard secure else { throw StanzaError(.notAuthorized, text: "register over an encrypted connection") }
        guard let query = iq.child("query", namespace: NS.register) else { throw StanzaError.badRequest }
        if iq.stanzaType == "get" {
            var form = XMLElement("query", xmlns: NS.register)
            form.append(XMLElement("instructions", xmlns: NS.register).withText("Choose a user name and password."))
            form.append(XMLElement("username", xmlns: NS.register))
            form.append(XMLElement("password", xmlns: NS.register))
            return iq.iqResult(form)
        }
        guard iq.stanzaType == "set" else { throw StanzaError.badRequest }
        let username = query.child("username", namespace: NS.register)?.text ?? ""
        let password = query.child("password", namespace: NS.register)?.text ?? ""
        guard !password.isEmpty, password.utf8.count <= 1024 else {
            throw StanzaError(.notAcceptable, text: "a password is required")
        }
        guard let local = (try? JID(localpart: username, domainpart: server.domain, resourcepart: nil))?.localpart else {
            throw StanzaError(.notAcceptable, text: "invalid user name")
        }
        let credentials = try StoredCredentials.derive(password: password)
        do {
            try await server.stores.accounts.createAccount(
                Account(username: local, credentials: credentials, createdAt: Date().timeIntervalSince1970))
        } catch let error as StorageError where error.isConflict {
            throw StanzaError(.conflict, text: "that user name is taken")
        }
        server.logger.notice("account registered in-band", metadata: ["xmpp.user": "\(local)"])
        return iq.iqResult()
    }
}
