import ArgumentParser
import Assembly
import Foundation
import SQLiteStorage
import Server
import Storage
import Vault

/// Who runs a command, for the trail: "cli:" + the login name.
func cliActor() -> String {
    let name = ProcessInfo.processInfo.environment["SUDO_USER"] ?? ProcessInfo.processInfo.environment["USER"] ?? String(getuid())
    return "cli:\(name)"
}

/// The trail as the CLI writes it (signing key from the keys directory).
func cliTrail(_ configuration: ServerConfiguration, _ stores: SQLiteStores) throws -> Trail {
    Trail(
        store: stores, signingKey: try Trail.signingKey(in: configuration.keysDirectory, create: true),
        anchorsPath: configuration.trailAnchorsFile)
}

struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Encryption at rest: show, rotate and re-encrypt with the data keys; change the master key.",
        discussion: """
            Message bodies (archives, offline messages, the audit record) are sealed with AES-256-GCM \
            under data keys; the data keys are stored wrapped by the master key (security.master_key_file, \
            default DATA_DIR/keys/master.key, or a passphrase in security.master_key_passphrase_env). \
            Rotation adds a data key for new data; old data stays readable; 're-encrypt' rewrites old \
            data under the newest key (the server may keep running). Every change goes to the audit trail.

            EXAMPLES:
              switchboard keys status
              switchboard keys rotate
              switchboard keys re-encrypt
              switchboard keys rotate-master --new-key-file /mnt/usb/master.key
            """,
        subcommands: [Status.self, Rotate.self, Reencrypt.self, RotateMaster.self])

    static func open(_ options: ConfigOptions) async throws -> (ServerConfiguration, SQLiteStores, KeyRing) {
        let configuration = try options.load()
        guard configuration.security.encryption else {
            throw ConfigurationError("security.encryption is off: there are no keys to manage")
        }
        let (stores, ring) = try await ServerAssembly.openStores(configuration, createKeys: false)
        guard let ring else { throw ConfigurationError("security.encryption is off") }
        return (configuration, stores, ring)
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the master key's fingerprint and the data keys.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            try await withConfigurationErrors {
                let (_, stores, ring) = try await Keys.open(options)
                print("master key: \(ring.master.id)")
                let formatter = ISO8601DateFormatter()
                for key in try await stores.dataKeys() {
                    let state = key.id == ring.activeKeyID ? "active" : "retired (still decrypts)"
                    print("data key \(key.id): created \(formatter.string(from: Date(timeIntervalSince1970: key.createdAt))), \(state)")
                }
            }
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a new data key: new data uses it (after a server restart); old data stays readable.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            try await withConfigurationErrors {
                let (configuration, stores, ring) = try await Keys.open(options)
                let id = try await KeyRing.rotate(master: ring.master, store: stores)
                try await cliTrail(configuration, stores).record(actor: cliActor(), action: "keys.rotate", details: ["data_key": String(id)])
                print("data key \(id) is now active; restart the server to seal new data with it, then run 'switchboard keys re-encrypt'")
            }
        }
    }

    struct Reencrypt: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "re-encrypt", abstract: "Rewrite every sealed value under the newest data key (and seal plaintext left from before).")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            try await withConfigurationErrors {
                let (configuration, stores, _) = try await Keys.open(options)
                let count = try await stores.resealAll()
                try await cliTrail(configuration, stores).record(actor: cliActor(), action: "keys.re-encrypt", details: ["values": String(count)])
                print("re-encrypted \(count) values")
            }
        }
    }

    struct RotateMaster: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate-master",
            abstract: "Re-wrap the data keys under a new master key file (created if missing); then point security.master_key_file at it.")
        @OptionGroup var options: ConfigOptions
        @Option(help: "The new master key file (created with mode 0600 if it does not exist).") var newKeyFile: String

        func run() async throws {
            try await withConfigurationErrors {
                let (configuration, stores, ring) = try await Keys.open(options)
                let new = try MasterKey.fromFile(newKeyFile, create: true)
                try await KeyRing.rewrap(from: ring.master, to: new, store: stores)
                try await cliTrail(configuration, stores).record(
                    actor: cliActor(), action: "keys.rotate-master", details: ["old": ring.master.id, "new": new.id])
                print("data keys re-wrapped under master key \(new.id); set security.master_key_file: \(newKeyFile) and restart")
            }
        }
    }
}

struct Audit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The tamper-evident trail: verify it, list it. (Reading messages is for auditors, through the HTTP API.)",
        discussion: """
            Every access request, approval, view, search and export, and every administrative action \
            (directory changes, key changes, server starts with a fingerprint of the configuration) is \
            appended to a hash-chained trail; anchor entries are signed (Ed25519, \
            DATA_DIR/keys/trail-signing.key) and copied to DATA_DIR/trail-anchors.log — ship that file \
            elsewhere. 'audit verify' recomputes the chain and reports any altered, removed or \
            reordered entry (exit 1).

            Auditors file access requests, approvers decide, and approved auditors search and export \
            through the HTTP API (docs/audit.md); there is deliberately no command here that reads messages.
            """,
        subcommands: [Verify.self, Log.self])

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check the whole trail; exit 1 if anything was tampered with.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            try await withConfigurationErrors {
                let configuration = try options.load()
                let stores = try SQLiteStores(directory: configuration.dataDir)
                let report = try await Trail.verify(
                    store: stores, publicKey: try Trail.publicKey(in: configuration.keysDirectory), anchorsPath: configuration.trailAnchorsFile)
                print("\(report.entries) entries, \(report.signedAnchors) signed anchors, \(report.shippedAnchors) shipped anchors checked")
                if report.intact {
                    print("the trail is intact")
                } else {
                    for problem in report.problems { print("TAMPERED: \(problem)") }
                    throw ExitCode(1)
                }
            }
        }
    }

    struct Log: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print trail entries.")
        @OptionGroup var options: ConfigOptions
        @Option(help: "First sequence number.") var from: Int64 = 1
        @Option(help: "How many entries.") var limit = 100

        func run() async throws {
            try await withConfigurationErrors {
                let configuration = try options.load()
                let stores = try SQLiteStores(directory: configuration.dataDir)
                let formatter = ISO8601DateFormatter()
                for entry in try await stores.trail(from: from, limit: limit) {
                    print("\(entry.seq) \(formatter.string(from: Date(timeIntervalSince1970: entry.time))) \(entry.actor) \(entry.action) \(entry.details)")
                }
            }
        }
    }
}
