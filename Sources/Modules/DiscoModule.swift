import Server
import XMLStream
import XMPPCore

/// XEP-0030 service discovery. Features come from what modules registered, never a hand list.
public struct DiscoModule: ServerModule {
    public let id = "disco"
    public init() {}

    public func register(in registry: inout ModuleRegistry) {
        registry.addServerFeature(NS.discoInfo)
        registry.addServerFeature(NS.discoItems)
        registry.handleIQ(NS.discoInfo, target: .server) { request in
            guard !request.isSet else { throw StanzaError.notAllowed }
            guard request.payload[attribute: "node"] == nil else { throw StanzaError.itemNotFound }
            var query = XMLElement("query", xmlns: NS.discoInfo)
            query.append(XMLElement("identity", xmlns: NS.discoInfo, ["category": "server", "type": "im", "name": "Switchboard"]))
            for feature in request.server.modules.serverFeatures.sorted() {
                query.append(XMLElement("feature", xmlns: NS.discoInfo, ["var": feature]))
            }
            for form in request.server.modules.serverInfoForms { query.append(form) }
            return query
        }
        registry.handleIQ(NS.discoItems, target: .server) { request in
            guard !request.isSet else { throw StanzaError.notAllowed }
            var query = XMLElement("query", xmlns: NS.discoItems)
            guard request.payload[attribute: "node"] == nil else { return query }
            // Services on their own domains (e.g. multi-user chat), from the module registry.
            for component in request.server.modules.components.values.sorted(by: { $0.domain < $1.domain }) {
                query.append(XMLElement("item", xmlns: NS.discoItems, ["jid": component.domain, "name": component.name]))
            }
            return query
        }
        registry.handleIQ(NS.discoInfo, target: .account) { request in
            guard !request.isSet else { throw StanzaError.notAllowed }
            guard try await request.server.accountExists(request.to) else { throw StanzaError.serviceUnavailable }
            var query = XMLElement("query", xmlns: NS.discoInfo)
            query.append(XMLElement("identity", xmlns: NS.discoInfo, ["category": "account", "type": "registered"]))
            for identity in request.server.modules.accountIdentities {
                query.append(XMLElement("identity", xmlns: NS.discoInfo, ["category": identity.category, "type": identity.type]))
            }
            for feature in request.server.modules.accountFeatures.sorted() {
                query.append(XMLElement("feature", xmlns: NS.discoInfo, ["var": feature]))
            }
            return query
        }
        registry.handleIQ(NS.discoItems, target: .account) { request in
            guard !request.isSet else { throw StanzaError.notAllowed }
            guard try await request.server.accountExists(request.to) else { throw StanzaError.serviceUnavailable }
            return XMLElement("query", xmlns: NS.discoItems)
        }
    }
}
