import Directory
import Server
import Storage

/// Requires certificate login (SASL EXTERNAL, XEP-0178) for users holding chosen directory
/// roles or sitting in chosen units (or units below them): their password logins are refused.
///
/// The refusal comes only after the password was checked and found right (see
/// `ServerContext.passwordLoginRefusal`), so it reveals nothing to someone guessing passwords.
public struct CertificateLoginModule: ServerModule {
    public let id = "certificate_login"
    let configuration: ServerConfiguration.CertificateLogin
    let directory: DirectoryRuntime

    public init(configuration: ServerConfiguration.CertificateLogin, directory: DirectoryRuntime) {
        self.configuration = configuration
        self.directory = directory
    }

    public func register(in registry: inout ModuleRegistry) {
        let configuration = self.configuration
        let directory = self.directory
        registry.addPasswordLoginPolicy { username, _ in
            Self.verdict(for: username, configuration: configuration, snapshot: directory.snapshot)
        }
        registry.onStart { server in
            // Runs after the directory module loaded the snapshot. A name that matches nothing is
            // most likely a typo that would leave administrators on passwords: say so loudly.
            let snapshot = directory.snapshot
            for role in configuration.requiredRoles where snapshot.roles[role] == nil {
                server.logger.warning(
                    "certificate_login.required_roles names a role the directory does not define",
                    metadata: ["directory.role": "\(role)"])
            }
            for unit in configuration.requiredUnits where snapshot.unit(unit) == nil {
                server.logger.warning(
                    "certificate_login.required_units names a unit the directory does not have (yet)",
                    metadata: ["directory.unit": "\(unit)"])
            }
            server.logger.info(
                "certificate login required",
                metadata: [
                    "certificate_login.roles": "\(configuration.requiredRoles.joined(separator: ","))",
                    "certificate_login.units": "\(configuration.requiredUnits.joined(separator: ","))",
                ])
        }
    }

    /// Whether `username` may use a password, by the directory as it is now.
    public static func verdict(
        for username: String, configuration: ServerConfiguration.CertificateLogin, snapshot: DirectorySnapshot
    ) -> PasswordLoginVerdict {
        let roles = snapshot.rolesByUser[username] ?? []
        if let role = configuration.requiredRoles.first(where: { roles.contains($0) }) {
            return .certificateRequired(
                "password login is not allowed for holders of the role '\(role)': log in with your company certificate (SASL EXTERNAL)")
        }
        let memberships = (snapshot.membershipsByUser[username] ?? []).map(\.unitID)
        if !memberships.isEmpty {
            for reference in configuration.requiredUnits {
                guard let unit = snapshot.unit(reference) else { continue }
                if memberships.contains(where: { snapshot.isDescendant($0, of: unit.id) }) {
                    return .certificateRequired(
                        "password login is not allowed for members of '\(snapshot.paths[unit.id] ?? unit.name)': log in with your company certificate (SASL EXTERNAL)")
                }
            }
        }
        return .allowed
    }
}
