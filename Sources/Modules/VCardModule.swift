import Server
import XMLStream
import XMPPCore

/// XEP-0054 vCard-temp: anyone may read a local user's vCard, only the owner may set it.
public struct VCardModule: ServerModule {
    public let id = "vcard"
    static let key = "vcard-temp:vCard"
    public init() {}

    public func register(in registry: inout ModuleRegistry) {
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
            if let stored = try await store.document(of: owner, key: Self.key), let vcard = try? XMLElement.parse(stored) {
                return vcard
            }
            return XMLElement("vCard", xmlns: NS.vcard)
        }
    }
}
