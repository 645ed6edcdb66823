import ArgumentParser
import Foundation
import Logging
import Modules
import SQLiteStorage
import Server

struct LDAPCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ldap",
        abstract: "Synchronise the organisation directory from LDAP (OpenLDAP, Active Directory).",
        discussion: """
            Reads units, users and role groups as configured in the 'ldap' section (see \
            docs/directory.md) and applies the differences in one transaction: an interrupted run \
            changes nothing. Users deleted or disabled in LDAP are disabled here (sessions end, \
            logins refused), never deleted, so their history stays for audit. A run that would \
            disable more than ldap.max_disable_percent of the users is refused (an empty result from \
            a wrong filter or an outage must not wipe the company) unless --force is given.

            The running server syncs on its own (ldap.sync_interval_minutes, \
            ldap.incremental_interval_seconds); this command runs one sync now, from any host that \
            can read the configuration and the database, and the running server applies the result \
            within a second.

            Exit codes: 0 done, 1 the directory could not be read (nothing changed), 65 refused by \
            the mass-disable guard, 78 configuration error.

            EXAMPLES:
              switchboard ldap sync --dry-run
              switchboard ldap sync --full
              switchboard ldap sync --incremental
              switchboard ldap history
            """,
        subcommands: [Sync.self, History.self])

    struct Sync: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run one sync now and print its summary.")
        @OptionGroup var options: ConfigOptions
        @Flag(help: "Read everything (default).") var full = false
        @Flag(help: "Only what changed since the last run.") var incremental = false
        @Flag(help: "Print what would change and change nothing.") var dryRun = false
        @Flag(help: "Apply even if more users would be disabled than ldap.max_disable_percent allows.") var force = false
        @Flag(help: "Print every planned change, not only the summary.") var verbose = false

        func validate() throws {
            if full && incremental { throw ValidationError("--full and --incremental exclude each other") }
        }

        func run() async throws {
            try await withConfigurationErrors {
                let configuration = try options.load()
                guard configuration.ldap.enabled else {
                    throw ConfigurationError("ldap.enabled is false: configure the 'ldap' section first (docs/directory.md)")
                }
                var logger = Logger(label: "switchboard.ldap")
                logger.logLevel = .warning
                let stores = try SQLiteStores(directory: configuration.dataDir)
                var sync = LDAPSync(
                    configuration: configuration.ldap, directory: stores, accounts: stores,
                    separator: configuration.directory.groupSeparator, logger: logger)
                sync.recorder = try cliTrail(configuration, stores).directoryRecorder(actor: "\(cliActor()) (ldap sync)")
                let report: LDAPSync.Report
                do {
                    report = try await sync.run(incremental ? .incremental : .full, dryRun: dryRun, force: force)
                } catch {
                    FileHandle.standardError.write(Data("switchboard: ldap sync failed, nothing changed: \(error)\n".utf8))
                    throw ExitCode(1)
                }
                if dryRun || verbose {
                    for line in report.plan.lines { print(line) }
                }
                for error in report.plan.errors { print("! \(error)") }
                print("\(report.mode.rawValue) sync \(report.outcome) in \(String(format: "%.2f", report.seconds)) s: \(report.plan.summary)")
                if verbose {
                    print("phases: " + report.phases.map { "\($0.0) \(String(format: "%.3f", $0.1)) s" }.joined(separator: ", "))
                }
                if report.outcome == "refused" { throw ExitCode(65) }
            }
        }
    }

    struct History: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the latest sync runs.")
        @OptionGroup var options: ConfigOptions
        @Option(help: "How many runs.") var limit = 20

        func run() async throws {
            try await withConfigurationErrors {
                let configuration = try options.load()
                let stores = try SQLiteStores(directory: configuration.dataDir)
                let formatter = ISO8601DateFormatter()
                for run in try await stores.syncRuns(limit: limit) {
                    let when = formatter.string(from: Date(timeIntervalSince1970: run.startedAt))
                    let seconds = String(format: "%.2f", run.finishedAt - run.startedAt)
                    print(
                        "\(when) \(run.mode) \(run.outcome) \(seconds)s added \(run.added) updated \(run.updated) moved \(run.moved) disabled \(run.disabled) errors \(run.errors)"
                    )
                    if run.outcome != "ok" { print("  \(run.message)") }
                }
            }
        }
    }
}
