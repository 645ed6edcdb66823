import Server
import XMLStream
import XMPPCore

/// XEP-0054 vCard-temp: anyone may read a local user's vCard, only the owner may set it.
/// Directory users' vCards show the directory's name, title, unit, phones and email.
public struct VCardModule: ServerModule {
    public let id = "vcard"
    static let key = "vcard-temp:vCard"
    let directory: DirectoryRuntime

    public init(directory: DirectoryRuntime = DirectoryRuntime()) {
        self.directory = directory
    }

    public func register(in registry: inout ModuleRegistry) {
        let directory = self.directory
        registry.addServerFeature(NS.vcard)
        registry.addAccountFeature(NS.vcard)
        registry.handleIQ(NS.vcard, target: .account) { request in
            let store = request.server.stores.privateXML
            let owner = request.to.bare.description
            if request.isSet {
                guard request.isToSelf else { throw StanzaError.forbidden }
                guard request.payload.name == "vCard" else { throw StanzaError.badRequest }
                try await store.setDocument(XMLSerializer.string(request.payload), of: owner, key: Self.key)
                return nil
            }
            if !request.isToSelf, !(try await request.server.accountExists(request.to)) {
                throw StanzaError.serviceUnavailable
            }
            let stored = try await store.document(of: owner, key: Self.key).flatMap { try? XMLElement.parse($0) }
            let snapshot = directory.snapshot
            if let local = request.to.localpart, let user = snapshot.users[local] {
                return DirectoryVCard.merge(stored, user: user, snapshot: snapshot)
            }
            return stored ?? XMLElement("vCard", xmlns: NS.vcard)
        }
    }
}
