import Foundation
import Server
import Storage
import XMPPCore

/// Ends the sessions that logged in with a certificate once it is revoked (`switchboard ca
/// revoke`, possibly from another process): the store is polled for new revocations.
public struct CertificateRevocationModule: ServerModule {
    public let id = "certificate_revocation"
    let pollInterval: Duration

    public init(pollInterval: Duration = .seconds(1)) {
        self.pollInterval = pollInterval
    }

    public func register(in registry: inout ModuleRegistry) {
        let pollInterval = self.pollInterval
        registry.addBackgroundTask { server in
            let configuration = server.configuration
            guard CertificateAuthority.exists(dataDir: configuration.dataDir) || configuration.tls.clientCA != nil else { return }
            // Overlap the windows by a second (clock steps, a revocation committed mid-poll); a
            // serial already handled is skipped.
            var since = Date().timeIntervalSince1970 - 1
            var handled: Set<String> = []
            while !Task.isCancelled {
                try? await Task.sleep(for: pollInterval)
                let started = Date().timeIntervalSince1970
                do {
                    let revoked = try await server.stores.certificates.revocations(since: since)
                    let fresh = Set(revoked.map(\.serial)).subtracting(handled)
                    if !fresh.isEmpty {
                        for session in server.router.allSessions() {
                            guard let serial = session.certificateSerial, fresh.contains(serial) else { continue }
                            server.logger.notice(
                                "ending a session: its client certificate was revoked",
                                metadata: ["xmpp.jid": "\(session.jid)", "tls.client_serial": "\(serial)"])
                            session.close(StreamError(.notAuthorized, text: "your client certificate was revoked"))
                        }
                        handled.formUnion(fresh)
                    }
                    since = started - 1
                } catch {
                    server.logger.error("revocation check failed", metadata: ["error": "\(error)"])
                }
            }
        }
    }
}
