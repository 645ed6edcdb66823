import Foundation
import Server
import XMLStream
import XMPPCore

/// XEP-0199 ping, answered for the server and for the user's own account.
public struct PingModule: ServerModule {
    public let id = "ping"
    public init() {}

    public func register(in registry: inout ModuleRegistry) {
        registry.addServerFeature(NS.ping)
        registry.handleIQ(NS.ping, target: .server) { _ in nil }
        registry.handleIQ(NS.ping, target: .account) { request in
            guard request.isToSelf else { throw StanzaError.serviceUnavailable }
            return nil
        }
    }
}

/// XEP-0092 software version of the server.
public struct VersionModule: ServerModule {
    public let id = "version"
    public static let version = "0.1.0"
    public init() {}

    public func register(in registry: inout ModuleRegistry) {
        registry.addServerFeature(NS.version)
        registry.handleIQ(NS.version, target: .server) { request in
            guard !request.isSet else { throw StanzaError.notAllowed }
            var query = XMLElement("query", xmlns: NS.version)
            query.append(XMLElement("name", xmlns: NS.version).withText("Switchboard"))
            query.append(XMLElement("version", xmlns: NS.version).withText(Self.version))
            return query
        }
    }
}

/// XEP-0202 entity time of the server.
public struct TimeModule: ServerModule {
    public let id = "time"
    public init() {}

    public func register(in registry: inout ModuleRegistry) {
        registry.addServerFeature(NS.time)
        registry.handleIQ(NS.time, target: .server) { request in
            guard !request.isSet else { throw StanzaError.notAllowed }
            var time = XMLElement("time", xmlns: NS.time)
            time.append(XMLElement("tzo", xmlns: NS.time).withText("+00:00"))
            time.append(XMLElement("utc", xmlns: NS.time).withText(Timestamp.string(Date())))
            return time
        }
    }
}
