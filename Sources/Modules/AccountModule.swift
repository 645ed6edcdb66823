import Foundation
import Server
import Storage
import XMLStream
import XMPPCore

/// XEP-0077 for a logged-in user: change password, or cancel the account (when allowed).
public struct AccountModule: ServerModule {
    public let id = "account"
    /// Users may delete their own account (off in an enterprise: the back office owns accounts).
    public var allowSelfRemoval: Bool

    public init(allowSelfRemoval: Bool = false) {
        self.allowSelfRemoval = allowSelfRemoval
    }

    public func register(in registry: inout ModuleRegistry) {
        registry.addAccountFeature(NS.register)
        let allowRemoval = allowSelfRemoval
        registry.handleIQ(NS.register, target: .account) { request in
            guard request.isToSelf, let username = request.from.localpart else { throw StanzaError.forbidden }
            if !request.isSet {
                var query = XMLElement("query", xmlns: NS.register)
                query.append(XMLElement("registered", xmlns: NS.register))
                query.append(XMLElement("username", xmlns: NS.register).withText(username))
                query.append(XMLElement("password", xmlns: NS.register))
                return query
            }
            let accounts = request.server.stores.accounts
            if request.payload.child("remove", namespace: NS.register) != nil {
                guard allowRemoval else { throw StanzaError(.notAllowed, text: "accounts are managed by the administrator") }
                // Messages still in the journal would be stored after the deletion: store them first.
                await request.server.journal.applied()
                _ = try await accounts.deleteAccount(username)
                for session in request.server.router.sessions(of: request.from.bare.description) {
                    session.close(StreamError(.notAuthorized, text: "account removed"))
                }
                return nil
            }
            guard let password = request.payload.child("password", namespace: NS.register)?.text, !password.isEmpty,
                password.utf8.count <= 1024
            else { throw StanzaError(.badRequest, text: "a new password is required") }
            if let given = request.payload.child("username", namespace: NS.register)?.text, given != username,
                (try? JID(localpart: given, domainpart: request.server.domain, resourcepart: nil))?.localpart != username
            {
                throw StanzaError(.notAllowed, text: "you can only change your own password")
            }
            let credentials = try StoredCredentials.derive(password: password)
            guard try await accounts.setCredentials(username, credentials) else { throw StanzaError.itemNotFound }
            request.server.logger.notice("password changed in-band", metadata: ["xmpp.user": "\(username)"])
            return nil
        }
    }
}

/// The modules every server runs, in registration order.
public enum BuiltinModules {
    public static func all(_ configuration: ServerConfiguration = ServerConfiguration()) -> [any ServerModule] {
        let directory = DirectoryRuntime(configuration: configuration.directory)
        var modules: [any ServerModule] = [
            DiscoModule(), RosterModule(directory: directory), PresenceModule(directory: directory), OfflineModule(),
            VCardModule(directory: directory), DirectoryModule(runtime: directory),
            PrivateStorageModule(), PingModule(), VersionModule(), TimeModule(), AccountModule(),
            CarbonsModule(), ClientStateModule(), BlockingModule(), ArchiveModule(), PushModule(), PEPModule(),
        ]
        if configuration.upload.enabled { modules.append(UploadModule(maxFileBytes: configuration.upload.maxFileBytes)) }
        if configuration.ldap.enabled { modules.append(LDAPModule(configuration: configuration.ldap, directory: directory)) }
        if configuration.muc.enabled { modules.append(MUCModule(configuration)) }
        modules.append(AuditModule(configuration: configuration, directory: directory, trail: TrailService()))
        modules.append(CertificateRevocationModule())
        if !configuration.certificateLogin.isEmpty {
            modules.append(CertificateLoginModule(configuration: configuration.certificateLogin, directory: directory))
        }
        return modules
    }
}
