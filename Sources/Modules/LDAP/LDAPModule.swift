import Directory
import Foundation
import LDAP
import Logging
import Server
import Storage

/// The company's LDAP directory inside the running server: scheduled syncs (a full one at start
/// when none has run, then incremental ones and periodic full ones) and login by LDAP bind for
/// the users it provides.
public struct LDAPModule: ServerModule {
    public let id = "ldap"
    let configuration: ServerConfiguration.LDAP
    let directory: DirectoryRuntime
    let gate = SyncGate()

    public init(configuration: ServerConfiguration.LDAP, directory: DirectoryRuntime) {
        self.configuration = configuration
        self.directory = directory
    }

    /// One sync at a time in this process.
    actor SyncGate {
        func run<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T { try await body() }
    }

    public func register(in registry: inout ModuleRegistry) {
        let configuration = self.configuration
        let directory = self.directory
        let gate = self.gate
        registry.addBackgroundTask { server in
            var ldapSync = LDAPSync(
                configuration: configuration, directory: server.stores.directory, accounts: server.stores.accounts,
                separator: directory.configuration.groupSeparator, logger: server.logger)
            ldapSync.recorder = server.modules.service(TrailService.self)?.trail?.directoryRecorder(actor: "ldap-sync")
            ldapSync.beforeApply = DirectoryRuntime.storeJournalBeforeDeletions(server)
            let sync = ldapSync
            var lastFull = ContinuousClock.now
            var first = true
            while !Task.isCancelled {
                let fullDue = first || (configuration.syncIntervalMinutes > 0 && ContinuousClock.now - lastFull >= .seconds(configuration.syncIntervalMinutes * 60))
                let mode: LDAPSync.Mode = fullDue ? .full : .incremental
                if fullDue || configuration.incrementalIntervalSeconds > 0 {
                    do {
                        _ = try await gate.run { try await sync.run(mode, current: directory.snapshot) }
                        if fullDue { lastFull = ContinuousClock.now; first = false }
                        await directory.refresh(server)
                    } catch {
                        // Logged by the sync; try again at the next round.
                    }
                }
                let pause = configuration.incrementalIntervalSeconds > 0
                    ? Duration.seconds(configuration.incrementalIntervalSeconds)
                    : Duration.seconds(max(60, configuration.syncIntervalMinutes * 60))
                try? await Task.sleep(for: first ? .seconds(30) : pause)
            }
        }
        guard configuration.login else { return }
        registry.addPasswordVerifier { username, password, server in
            guard let user = directory.snapshot.users[username], user.source == "ldap" else { return .notApplicable }
            return await LDAPLogin(configuration: configuration, logger: server.logger).check(username: username, password: password)
        }
    }
}

/// Login by LDAP bind: find the user's entry as the service account, then bind as it.
struct LDAPLogin {
    let configuration: ServerConfiguration.LDAP
    let logger: Logger

    func check(username: String, password: String) async -> PasswordCheck {
        guard !password.isEmpty else { return .rejected }  // an empty simple bind is anonymous: never a login
        let attributes = configuration.effectiveAttributes
        let connection: LDAPConnection
        do {
            connection = try await LDAPSync.connect(configuration, group: .singletonMultiThreadedEventLoopGroup, logger: logger)
        } catch {
            logger.error("LDAP login: directory unreachable", metadata: ["error": "\(error)"])
            return .unavailable
        }
        defer { Task { await connection.close() } }
        do {
            let filter = "(&\(configuration.effectiveUserFilter)(\(attributes.username ?? "uid")=\(LDAPFilter.escape(username))))"
            var found: [LDAPEntry] = []
            for base in configuration.effectiveUserBases {
                found += try await connection.search(base: base, filter: filter, attributes: ["1.1"], sizeLimit: 2)
            }
            guard found.count == 1, let entry = found.first else {
                logger.notice("LDAP login: no single directory entry", metadata: ["xmpp.user": "\(username)", "entries": "\(found.count)"])
                return .rejected
            }
            try await connection.bind(dn: entry.dn, password: password)
            return .accepted
        } catch let error as LDAPError {
            if case .result(let code, _, _, _) = error, code == 49 { return .rejected }
            logger.error("LDAP login failed", metadata: ["xmpp.user": "\(username)", "error": "\(error)"])
            return .unavailable
        } catch {
            logger.error("LDAP login failed", metadata: ["xmpp.user": "\(username)", "error": "\(error)"])
            return .unavailable
        }
    }
}
