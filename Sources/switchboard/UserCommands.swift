import ArgumentParser
import Foundation
import SQLiteStorage
import Server
import Storage
import XMPPCore

struct User: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage local accounts (works while the server runs).",
        discussion: """
            USER is a user name (the part before @) or a bare address user@DOMAIN of the configured \
            domain. Names are normalised as XMPP addresses are (case-folded, NFC), so 'Alice' and \
            'alice' are the same account; Chinese and other non-ASCII names are fine.

            Passwords are never stored: only SCRAM-SHA-1 and SCRAM-SHA-256 salted keys (4096 PBKDF2 \
            iterations). Give the password on standard input with --password-stdin, type it at the \
            prompt on a terminal, or let the command generate and print one.
            """,
        subcommands: [Add.self, Passwd.self, Del.self, List.self]
    )

    /// USER and how to get the password, shared by `add` and `passwd`.
    struct PasswordArguments: ParsableArguments {
        @OptionGroup var options: ConfigOptions
        @Argument(help: "User name or user@domain.") var user: String
        @Flag(help: "Read the password from the first line of standard input.") var passwordStdin = false

        /// Opens the stores and derives credentials; `body` stores them.
        func apply(_ body: (SQLiteStores, String, String, StoredCredentials) async throws -> String) async throws {
            try await withConfigurationErrors {
                let (configuration, username) = try resolve(options, user)
                let stores = try SQLiteStores(directory: configuration.dataDir)
                let (password, generated) = try readPassword(passwordStdin)
                let credentials = try StoredCredentials.derive(password: password)
                print(try await body(stores, username, "\(username)@\(configuration.domain)", credentials))
                if generated { print("password: \(password)") }
            }
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create an account.")
        @OptionGroup var arguments: PasswordArguments

        func run() async throws {
            try await arguments.apply { stores, username, address, credentials in
                do {
                    try await stores.createAccount(
                        Account(username: username, credentials: credentials, createdAt: Date().timeIntervalSince1970))
                } catch let error as StorageError where error.isConflict {
                    throw ValidationError("\(address) already exists; use 'user passwd' to change its password")
                }
                return "created \(address)"
            }
        }
    }

    struct Passwd: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set an account's password.")
        @OptionGroup var arguments: PasswordArguments

        func run() async throws {
            try await arguments.apply { stores, username, address, credentials in
                guard try await stores.setCredentials(username, credentials) else {
                    throw ValidationError("no account \(address)")
                }
                return "password changed for \(address)"
            }
        }
    }

    struct Del: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete an account with its roster, offline messages and private data.")
        @OptionGroup var options: ConfigOptions
        @Argument(help: "User name or user@domain.") var user: String

        func run() async throws {
            try await withConfigurationErrors {
                let (configuration, username) = try resolve(options, user)
                let stores = try SQLiteStores(directory: configuration.dataDir)
                guard try await stores.deleteAccount(username) else {
                    throw ValidationError("no account \(username)@\(configuration.domain)")
                }
                print("deleted \(username)@\(configuration.domain)")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List accounts, one address per line.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            try await withConfigurationErrors {
                let configuration = try options.load()
                let stores = try SQLiteStores(directory: configuration.dataDir)
                for name in try await stores.listAccounts() { print("\(name)@\(configuration.domain)") }
            }
        }
    }
}

/// Loads the configuration and normalises USER to a localpart of its domain.
func resolve(_ options: ConfigOptions, _ user: String) throws -> (ServerConfiguration, String) {
    let configuration = try options.load()
    let jid: JID
    do {
        jid = user.contains("@") ? try JID(user) : try JID(localpart: user, domainpart: configuration.domain, resourcepart: nil)
    } catch {
        throw ValidationError("'\(user)' is not a valid user name: \(error)")
    }
    guard jid.domainpart == configuration.domain, let local = jid.localpart, jid.resourcepart == nil else {
        throw ValidationError("'\(user)' is not an account of \(configuration.domain)")
    }
    return (configuration, local)
}

/// The password from stdin, the terminal, or a generated one (second value true).
func readPassword(_ fromStdin: Bool) throws -> (String, Bool) {
    if fromStdin {
        guard let line = readLine(strippingNewline: true), !line.isEmpty else {
            throw ValidationError("--password-stdin: no password on standard input")
        }
        return (line, false)
    }
    if isatty(STDIN_FILENO) != 0, let typed = getpass("Password: "), let password = String(validatingCString: typed), !password.isEmpty {
        return (password, false)
    }
    return (PasswordGenerator.make(), true)
}
