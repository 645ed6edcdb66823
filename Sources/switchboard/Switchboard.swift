import ArgumentParser
import Assembly
import Foundation
import Logging
import Directory
import Modules
import SQLiteStorage
import Server
import ServiceLifecycle
import Storage
import Vault
import XMPPCore

@main
struct Switchboard: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchboard",
        abstract: "Switchboard: an enterprise instant-messaging server speaking standard XMPP.",
        discussion: """
            Switchboard runs on your own intranet. Any standard XMPP client (Gajim, Dino, Profanity, \
            Conversations, Monal, …) connects to it; other systems use its HTTP interface.

            With no configuration file, `switchboard serve` runs on its embedded defaults: domain \
            'localhost', data in ./data (SQLite), client connections on port 5222 (STARTTLS) and 5223 \
            (direct TLS), HTTP and XMPP-over-WebSocket on 127.0.0.1:5280, and a self-signed certificate \
            generated on first start. Every key is documented in switchboard.example.yaml.

            EXAMPLES:
              switchboard serve
              switchboard serve --config /etc/switchboard/switchboard.yaml
              switchboard user add alice --config /etc/switchboard/switchboard.yaml
              echo 's3cret' | switchboard user passwd alice --password-stdin
              switchboard org unit add 研发中心
              switchboard org user add zhangwei --name 张伟 --unit 研发中心 --title 工程师
              switchboard org tree
              switchboard ca init && switchboard ca issue alice
            """,
        version: VersionModule.version,
        subcommands: [Serve.self, User.self, Org.self, LDAPCommand.self, Keys.self, Audit.self, CACommand.self, Bench.self]
    )
}

/// Options shared by every command that reads the configuration.
struct ConfigOptions: ParsableArguments {
    @Option(
        name: .shortAndLong,
        help: ArgumentHelp(
            "YAML configuration file. Default: ./switchboard.yaml if it exists, else the embedded defaults.",
            valueName: "file"))
    var config: String?

    func load() throws -> ServerConfiguration {
        if let config { return try ServerConfiguration.load(path: config) }
        if FileManager.default.fileExists(atPath: "switchboard.yaml") {
            return try ServerConfiguration.load(path: "switchboard.yaml")
        }
        return ServerConfiguration()
    }
}

/// Turns configuration problems into a clean message and exit code 78 (EX_CONFIG).
func withConfigurationErrors<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as ConfigurationError {
        FileHandle.standardError.write(Data("switchboard: \(error.description)\n".utf8))
        throw ExitCode(78)
    } catch let error as StorageError {
        FileHandle.standardError.write(Data("switchboard: storage: \(error.description)\n".utf8))
        throw ExitCode(74)
    } catch let error as VaultError {
        FileHandle.standardError.write(Data("switchboard: keys: \(error.description)\n".utf8))
        throw ExitCode(78)
    } catch let error as DirectoryError {
        FileHandle.standardError.write(Data("switchboard: \(error.description)\n".utf8))
        throw ExitCode(error.kind == .notFound ? 66 : 65)
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the server until SIGTERM or SIGINT.",
        discussion: """
            Binds the client listeners (STARTTLS, direct TLS) and the HTTP listener (WebSocket at \
            /xmpp-websocket, Prometheus metrics at /metrics, /health), opens the database in data_dir and \
            serves until it receives SIGTERM or SIGINT, then closes every session with 'system-shutdown' \
            and exits 0.

            On the first start with no accounts (and bootstrap_admin: true) it creates admin@DOMAIN and \
            prints its one-time password once on standard output. Change it with \
            `switchboard user passwd admin`.

            Exit codes: 0 after a clean shutdown, 78 for a configuration error, 74 for a storage error.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Option(help: ArgumentHelp("Write the bound ports and PID as JSON to this file once listening (for scripts and tests).", valueName: "file"))
    var statusFile: String?

    func run() async throws {
        try await withConfigurationErrors {
            let configuration = try options.load()
            let level = Logger.Level(rawValue: configuration.logLevel) ?? .info
            let json = configuration.logFormat == "json"
            LoggingSystem.bootstrap { label in
                if json { return JSONLogHandler(label: label, level: level) }
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
            let logger = Logger(label: "switchboard")
            let (stores, _) = try await ServerAssembly.openStores(configuration)
            if configuration.bootstrapAdmin, try await stores.accountCount() == 0 {
                let password = PasswordGenerator.make()
                let name = "admin"
                try await stores.createAccount(
                    Account(username: name, credentials: try StoredCredentials.derive(password: password), createdAt: Date().timeIntervalSince1970))
                print("Created the administrator account \(name)@\(configuration.domain).")
                print("One-time password (shown only now): \(password)")
                print("Log in with any XMPP client, then change it: switchboard user passwd \(name)")
                fflush(nil)
            }
            let server = try XMPPServer(
                configuration: configuration, stores: stores.stores, modules: BuiltinModules.all(configuration), logger: logger,
                statusFile: statusFile)
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(
                    services: [.init(service: server)],
                    gracefulShutdownSignals: [.sigterm, .sigint],
                    logger: logger))
            try await group.run()
        }
    }
}

enum PasswordGenerator {
    /// 20 characters from an unambiguous alphabet (~115 bits).
    static func make() -> String {
        let alphabet = Array("abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789")
        var generator = SystemRandomNumberGenerator()
        return String((0..<20).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &generator)] })
    }
}
