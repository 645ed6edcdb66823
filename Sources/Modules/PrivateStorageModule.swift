import Server
import XMLStream
import XMPPCore

/// XEP-0049 private XML storage: a user's own documents, keyed by element name and namespace.
public struct PrivateStorageModule: ServerModule {
    public let id = "private"
    public init() {}

    public func register(in registry: inout ModuleRegistry) {
        registry.addAccountFeature(NS.privateStorage)
        registry.addServerFeature(NS.privateStorage)
        registry.handleIQ(NS.privateStorage, target: .account) { request in
            guard request.isToSelf else { throw StanzaError.forbidden }
            let children = Array(request.payload.elements)
            guard !children.isEmpty, request.isSet || children.count == 1 else {
                throw StanzaError(.notAcceptable, text: "exactly one child element for get, at least one for set")
            }
            for child in children where child.namespace.hasPrefix("jabber:") || child.namespace.isEmpty {
                throw StanzaError(.notAcceptable, text: "jabber: namespaces are reserved")
            }
            let store = request.server.stores.privateXML
            let user = request.from.bare.description
            if request.isSet {
                for child in children {
                    try await store.setDocument(XMLSerializer.string(child), of: user, key: "private:\(child.namespace) \(child.name)")
                }
                return nil
            }
            let child = children[0]
            var query = XMLElement("query", xmlns: NS.privateStorage)
            if let stored = try await store.document(of: user, key: "private:\(child.namespace) \(child.name)"),
                let document = try? XMLElement.parse(stored)
            {
                query.append(document)
            } else {
                query.append(XMLElement(name: child.name, namespace: child.namespace))
            }
            return query
        }
    }
}
