import Directory
import Foundation
import LDAP
import Logging
import NIOCore
import NIOPosix
import Server
import Storage

/// One directory synchronisation: read the LDAP server, plan, apply in one transaction.
///
/// Full: every unit, user and mapped group in scope; users missing from it are disabled.
/// Incremental: only what changed since the last run — RFC 4533 content sync with the cookie
/// kept in the directory (OpenLDAP syncprov), or modifyTimestamp plus an id listing for
/// deletions (everywhere else). Either way the changes and the new cookie commit together,
/// so an aborted run changes nothing and the next one resumes from the same point.
public struct LDAPSync: Sendable {
    public enum Mode: String, Sendable { case full, incremental }

    public struct Report: Sendable {
        public var mode: Mode
        public var dryRun: Bool
        public var plan: SyncPlan
        /// ok, refused, failed, dry-run
        public var outcome: String
        public var seconds: Double
        public var message: String
        /// Seconds per phase (load, read, plan, apply), for --verbose and tuning.
        public var phases: [(String, Double)] = []
    }

    let configuration: ServerConfiguration.LDAP
    let directory: any DirectoryStore
    let accounts: any AccountStore
    let separator: String
    let logger: Logger
    let group: any EventLoopGroup
    /// Records applied runs in the audit trail.
    public var recorder: (@Sendable ([DirectoryChange]) async -> Void)?
    /// Passed to the directory service (see `DirectoryService.beforeApply`).
    public var beforeApply: (@Sendable ([DirectoryChange]) async -> Void)?

    public init(
        configuration: ServerConfiguration.LDAP, directory: any DirectoryStore, accounts: any AccountStore, separator: String = "/",
        logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.configuration = configuration
        self.directory = directory
        self.accounts = accounts
        self.separator = separator
        self.logger = logger
        self.group = group
    }

    static func connectionConfiguration(_ configuration: ServerConfiguration.LDAP) throws -> LDAPConfiguration {
        let timeout = Duration.milliseconds(configuration.timeoutMs)
        return try LDAPConfiguration(
            url: configuration.url, startTLS: configuration.url.hasPrefix("ldap://") && configuration.startTLS,
            caCertificatePath: configuration.caFile, verifyHostname: configuration.verifyHostname, connectTimeout: timeout,
            operationTimeout: timeout)
    }

    /// Connects and binds as the service account.
    static func connect(_ configuration: ServerConfiguration.LDAP, group: any EventLoopGroup, logger: Logger) async throws -> LDAPConnection {
        let connection = try await LDAPConnection.connect(try connectionConfiguration(configuration), group: group, logger: logger)
        do {
            if let dn = configuration.bindDN, let password = try configuration.serviceBindPassword() {
                try await connection.bind(dn: dn, password: password)
            }
        } catch {
            await connection.close()
            throw error
        }
        return connection
    }

    /// - Parameter current: the running server's snapshot, used when it is still current (saves
    ///   loading the whole directory, most of an incremental run's time).
    public func run(_ mode: Mode, dryRun: Bool = false, force: Bool = false, current: DirectorySnapshot? = nil) async throws -> Report {
        let started = Date()
        var service = DirectoryService(store: directory, accounts: accounts, separator: separator)
        service.recorder = recorder
        service.beforeApply = beforeApply
        var phases: [(String, Double)] = []
        var mark = Date()
        func phase(_ name: String) {
            let now = Date()
            phases.append((name, now.timeIntervalSince(mark)))
            mark = now
        }
        do {
            let snapshot: DirectorySnapshot
            if let current, try await directory.directoryVersion() == current.version {
                snapshot = current
            } else {
                snapshot = try await service.currentSnapshot(searchable: false)
            }
            phase("load")
            let planner = DirectorySyncPlanner(configuration: configuration, snapshot: snapshot)
            let connection = try await Self.connect(configuration, group: group, logger: logger)
            defer { Task { await connection.close() } }
            var state: [DirectoryChange] = []
            let input = try await read(mode, connection: connection, planner: planner, snapshot: snapshot, state: &state, startedAt: started)
            phase("read")
            var plan = planner.plan(input, force: force)
            phase("plan")
            let seconds = { Date().timeIntervalSince(started) }
            if dryRun {
                let report = Report(mode: mode, dryRun: true, plan: plan, outcome: "dry-run", seconds: seconds(), message: plan.summary, phases: phases)
                try await record(report, started: started)
                return report
            }
            if plan.refused {
                let report = Report(mode: mode, dryRun: false, plan: plan, outcome: "refused", seconds: seconds(), message: plan.errors.last ?? "")
                logger.error("directory sync refused", metadata: ["ldap.sync.mode": "\(mode.rawValue)", "reason": "\(report.message)"])
                try await record(report, started: started)
                return report
            }
            plan.changes = [.requireVersion(snapshot.version)] + plan.changes + state
            try await service.apply(plan.changes)
            phase("apply")
            let report = Report(mode: mode, dryRun: false, plan: plan, outcome: "ok", seconds: seconds(), message: plan.summary, phases: phases)
            logger.notice(
                "directory sync done",
                metadata: ["ldap.sync.mode": "\(mode.rawValue)", "summary": "\(plan.summary)", "seconds": "\(report.seconds)"])
            for error in plan.errors.prefix(20) { logger.warning("directory sync skipped an entry", metadata: ["reason": "\(error)"]) }
            try await record(report, started: started)
            return report
        } catch {
            let message = "\(error)"
            logger.error("directory sync failed; nothing was changed", metadata: ["ldap.sync.mode": "\(mode.rawValue)", "error": "\(message)"])
            let failed = Report(mode: mode, dryRun: dryRun, plan: SyncPlan(), outcome: "failed", seconds: Date().timeIntervalSince(started), message: message)
            try? await record(failed, started: started)
            throw error
        }
    }

    private func record(_ report: Report, started: Date) async throws {
        let plan = report.plan
        try await directory.recordSyncRun(
            SyncRun(
                startedAt: started.timeIntervalSince1970, finishedAt: Date().timeIntervalSince1970,
                mode: report.dryRun ? "\(report.mode.rawValue) (dry run)" : report.mode.rawValue, outcome: report.outcome,
                added: plan.added, updated: plan.updated, moved: plan.moved, disabled: plan.disabled, errors: plan.errors.count,
                message: report.message))
    }

    // MARK: - Reading the directory server

    private static let cookieKey = "ldap.cookie"
    private static let timestampKey = "ldap.timestamp"

    /// Reads what the plan needs; appends the cookies/timestamps to store with the changes.
    private func read(
        _ mode: Mode, connection: LDAPConnection, planner: DirectorySyncPlanner, snapshot: DirectorySnapshot,
        state: inout [DirectoryChange], startedAt: Date
    ) async throws -> SyncInput {
        let useContentSync = configuration.effectiveIncrementalMethod == "content_sync"
        var searches: [(key: String, base: String, filter: String, attributes: [String], isUnits: Bool)] = []
        if configuration.unitFrom == "tree", let base = configuration.unitBase {
            searches.append(("units", base, configuration.effectiveUnitFilter, planner.unitAttributes, true))
        }
        for (index, base) in configuration.effectiveUserBases.enumerated() {
            searches.append(("users.\(index)", base, configuration.effectiveUserFilter, planner.userAttributes, false))
        }
        var input = SyncInput(units: nil, unitsComplete: true, users: [], usersComplete: true)
        if searches.contains(where: \.isUnits) { input.units = [] }

        for search in searches {
            let key = "\(Self.cookieKey).\(search.key).\(Self.fingerprint(search.base, search.filter))"
            let stored = try await directory.directoryState(key)
            let cookie = stored.flatMap { Data(base64Encoded: $0) }.map { [UInt8]($0) }
            var entries: [LDAPEntry] = []
            var complete = true
            if useContentSync, mode == .full || cookie != nil {
                let result = try await connection.syncRefresh(
                    base: search.base, filter: try LDAPFilter(search.filter), attributes: search.attributes + ["entryUUID"],
                    cookie: mode == .full ? nil : cookie)
                if result.refreshRequired, mode == .incremental {
                    // The server lost our place: read everything again.
                    state.append(.setState(key: key, value: nil))
                    let full = try await connection.syncRefresh(
                        base: search.base, filter: try LDAPFilter(search.filter), attributes: search.attributes + ["entryUUID"], cookie: nil)
                    entries = full.changes.map(\.entry)
                    if let next = full.cookie { state.append(.setState(key: key, value: Data(next).base64EncodedString())) }
                } else {
                    entries = result.changes.map(\.entry)
                    complete = mode == .full
                    for uuid in result.deletedEntryUUIDs { input.deleted.insert(uuid.uuidString.lowercased()) }
                    if mode == .incremental, !result.refreshDeletes, !result.presentEntryUUIDs.isEmpty {
                        // Present phase: what is neither present nor changed is gone.
                        let present = Set(result.presentEntryUUIDs.map { $0.uuidString.lowercased() })
                            .union(result.changes.map { $0.entryUUID.uuidString.lowercased() })
                        let known = search.isUnits
                            ? snapshot.units.values.filter { $0.source == "ldap" && ($0.externalDN.map { DN.isWithin($0, search.base) } ?? false) }.compactMap(\.externalID)
                            : snapshot.users.values.filter { $0.source == "ldap" && ($0.externalDN.map { DN.isWithin($0, search.base) } ?? false) }.compactMap(\.externalID)
                        for uuid in known where !present.contains(uuid) { input.deleted.insert(uuid) }
                    }
                    if let next = result.cookie { state.append(.setState(key: key, value: Data(next).base64EncodedString())) }
                }
            } else if mode == .incremental, !useContentSync, !search.isUnits,
                let since = try await directory.directoryState(Self.timestampKey + "." + search.key)
            {
                // Timestamp method: changed entries, then an id listing to find deletions.
                let attribute = planner.attributes.modifyTimestamp ?? "modifyTimestamp"
                let filter = "(&\(search.filter)(\(attribute)>=\(since)))"
                entries = try await connection.search(
                    base: search.base, filter: filter, attributes: search.attributes, pageSize: configuration.pageSize)
                complete = false
                var listed = Set<String>()
                let uuidAttribute = planner.attributes.uuid ?? "entryUUID"
                try await connection.search(
                    base: search.base, filter: try LDAPFilter(search.filter), attributes: [uuidAttribute], pageSize: configuration.pageSize
                ) { entry in
                    if let uuid = planner.uuid(of: entry) { listed.insert(uuid) }
                }
                for user in snapshot.users.values where user.source == "ldap" && (user.externalDN.map { DN.isWithin($0, search.base) } ?? false) {
                    if let uuid = user.externalID, !listed.contains(uuid) { input.deleted.insert(uuid) }
                }
            } else {
                entries = try await connection.search(
                    base: search.base, filter: try LDAPFilter(search.filter), attributes: search.attributes, pageSize: configuration.pageSize)
            }
            if !useContentSync, !search.isUnits {
                state.append(.setState(key: Self.timestampKey + "." + search.key, value: Self.generalizedTime(startedAt.addingTimeInterval(-120))))
            }
            if search.isUnits {
                input.units = (input.units ?? []) + entries
                input.unitsComplete = input.unitsComplete && complete
            } else {
                input.users += entries
                input.usersComplete = input.usersComplete && complete
            }
        }
        if let base = configuration.groupBase, !configuration.groupRoles.isEmpty {
            input.groups = try await connection.search(
                base: base, filter: try LDAPFilter(configuration.effectiveGroupFilter),
                attributes: ["cn", configuration.effectiveGroupMemberAttribute], pageSize: configuration.pageSize)
        }
        return input
    }

    /// Cookies belong to one search: a changed base or filter starts afresh.
    static func fingerprint(_ base: String, _ filter: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in (DN.normalize(base) + "|" + filter).utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return String(hash, radix: 16)
    }

    /// LDAP GeneralizedTime (UTC), e.g. 20261125041500Z.
    static func generalizedTime(_ date: Date) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? .current
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        func two(_ value: Int?) -> String { String(value ?? 0).leftPadded(2) }
        return String(c.year ?? 1970) + two(c.month) + two(c.day) + two(c.hour) + two(c.minute) + two(c.second) + "Z"
    }
}
