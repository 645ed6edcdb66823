import Foundation
import SQLiteStorage
import Server
import Storage
import Vault

/// Opens what a server process runs on, the same way for `switchboard serve`, the key
/// commands and the tests: the database, and the key ring that seals message bodies.
public enum ServerAssembly {
    /// The master key as configured: the passphrase in `security.master_key_passphrase_env`, or
    /// the key file (created on first start when `create`).
    public static func masterKey(_ configuration: ServerConfiguration, create: Bool) throws -> MasterKey {
        if let variable = configuration.security.masterKeyPassphraseEnv {
            guard let passphrase = ProcessInfo.processInfo.environment[variable], !passphrase.isEmpty else {
                throw VaultError("security.master_key_passphrase_env names \(variable), which is not set")
            }
            return try MasterKey.fromPassphrase(passphrase, saltPath: configuration.keysDirectory + "/master.salt")
        }
        return try MasterKey.fromFile(configuration.effectiveMasterKeyFile, create: create)
    }

    /// The stores, sealing message bodies when `security.encryption` is on.
    public static func openStores(_ configuration: ServerConfiguration, createKeys: Bool = true) async throws -> (SQLiteStores, KeyRing?) {
        let plain = try SQLiteStores(directory: configuration.dataDir)
        guard configuration.security.encryption else { return (plain, nil) }
        let ring = try await KeyRing.open(master: try masterKey(configuration, create: createKeys), store: plain)
        return (plain.encrypted(with: ring), ring)
    }
}
