import Directory
import Foundation
import Logging
@testable import Modules
import SQLiteStorage
import Server
import Storage
import SwitchboardTestSupport
import LDAP
import Testing

/// Directory sync against a real slapd loaded with a realistic company (Tests/Fixtures/ldap).
@Suite(.serialized) struct LDAPSyncTests {
    static let roles = ["im-admins": "admin", "auditors": "auditor", "approvers": "approver", "sms-senders": "sms-sender"]

    private func configuration(_ slapd: SlapdServer, _ change: (inout ServerConfiguration.LDAP) -> Void = { _ in }) -> ServerConfiguration.LDAP {
        var ldap = ServerConfiguration.LDAP()
        ldap.enabled = true
        ldap.url = slapd.url
        ldap.startTLS = false
        ldap.allowPlaintext = true
        ldap.bindDN = slapd.adminDN
        ldap.bindPassword = slapd.adminPassword
        ldap.unitBase = "ou=Departments,\(slapd.baseDN)"
        ldap.groupBase = "ou=Groups,\(slapd.baseDN)"
        ldap.groupRoles = Self.roles
        ldap.disabledAttribute = "employeeType"
        ldap.disabledValues = ["disabled"]
        change(&ldap)
        return ldap
    }

    private func withSync(
        tls: Bool = false, _ change: @escaping (inout ServerConfiguration.LDAP) -> Void = { _ in },
        _ body: (SlapdServer, SQLiteStores, (LDAPSync.Mode, Bool) async throws -> LDAPSync.Report) async throws -> Void
    ) async throws {
        let slapd = try await SlapdServer.start(ldif: SlapdServer.companyLDIF, tls: tls)
        defer { slapd.stop() }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sb-ldap-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let stores = try SQLiteStores(directory: path)
        var logger = Logger(label: "test.ldap")
        logger.logLevel = .critical
        let config = configuration(slapd, change)
        let sync = LDAPSync(configuration: config, directory: stores, accounts: stores, logger: logger)
        try await body(slapd, stores, { mode, force in try await sync.run(mode, force: force) })
    }

    private func snapshot(_ stores: SQLiteStores) async throws -> DirectorySnapshot {
        try await DirectoryService(store: stores, accounts: stores).currentSnapshot()
    }

    private func b64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

    @Test func distinguishedNames() {
        #expect(DN.normalize("UID=Zhang, OU=平台部 ,dc=Example,DC=com") == "uid=zhang,ou=平台部,dc=example,dc=com")
        #expect(DN.normalize("cn=Smith\\, John,ou=People") == "cn=smith\\, john,ou=people")
        #expect(DN.components("cn=Smith\\, John,ou=People").count == 2)
        #expect(DN.firstValue("cn=Smith\\, John,ou=People") == "Smith, John")
        #expect(DN.firstValue("ou=\\E5\\B9\\B3,dc=x") == "平")
        #expect(DN.parent("uid=a,ou=B,dc=C") == "ou=b,dc=c")
        #expect(DN.parent("dc=c") == "")
        #expect(DN.isWithin("uid=a,ou=B,dc=C", "ou=b, dc=c"))
        #expect(!DN.isWithin("uid=a,ou=XB,dc=C", "ou=b,dc=c"))
    }

    /// Pure planner rules on synthetic entries: Active Directory defaults (objectGUID, sAMAccountName,
    /// userAccountControl bit 2) and units from a department attribute.
    @Test func plannerWithActiveDirectoryDefaultsAndDepartmentAttribute() throws {
        var config = ServerConfiguration.LDAP()
        config.enabled = true
        config.schema = "active_directory"
        config.unitFrom = "attribute"
        config.userBases = ["OU=Staff,DC=corp,DC=example"]
        let planner = DirectorySyncPlanner(configuration: config, snapshot: .empty)
        func user(_ name: String, _ guid: UInt8, _ control: String, _ department: String) -> LDAPEntry {
            LDAPEntry(dn: "CN=\(name),OU=Staff,DC=corp,DC=example", attributes: [
                .init(name: "objectGUID", values: [Array(repeating: guid, count: 16)]),
                .init(name: "sAMAccountName", strings: [name]),
                .init(name: "displayName", strings: [name.uppercased()]),
                .init(name: "userAccountControl", strings: [control]),
                .init(name: "department", strings: [department]),
            ])
        }
        let input = SyncInput(
            units: nil, unitsComplete: true,
            users: [user("alice", 1, "512", "研发中心/平台部"), user("bob", 2, "514", "研发中心"),
                    user("carol", 3, "512", "销售部"), user("outsider", 4, "512", "x")].enumerated().map { index, entry in
                index == 3 ? LDAPEntry(dn: "CN=outsider,OU=Other,DC=corp,DC=example", attributes: entry.attributes) : entry
            },
            usersComplete: true)
        let plan = planner.plan(input, force: false)
        #expect(plan.added == 3)  // the outsider is outside the configured subtree
        #expect(plan.unitsAdded == 3)  // 研发中心, 研发中心/平台部, 销售部
        var users: [String: DirectoryUser] = [:]
        var units: [String: OrgUnit] = [:]
        var memberships: [Membership] = []
        for change in plan.changes {
            switch change {
            case .putUser(let u): users[u.username] = u
            case .putUnit(let u): units[u.id] = u
            case .putMembership(let m): memberships.append(m)
            default: break
            }
        }
        #expect(users["bob"]?.status == .disabled)  // 514 = 512 | ACCOUNTDISABLE
        #expect(users["alice"]?.status == .active)
        #expect(users["alice"]?.externalID == String(repeating: "01", count: 16))
        let platform = try #require(units.values.first { $0.name == "平台部" })
        #expect(units[platform.parentID ?? ""]?.name == "研发中心")
        #expect(memberships.contains { $0.username == "alice" && $0.unitID == platform.id && $0.isPrimary })
    }

    @Test func fullSyncBuildsTheCompanyAndIsIdempotent() async throws {
        try await withSync { _, stores, run in
            let report = try await run(.full, false)
            #expect(report.outcome == "ok")
            #expect(report.plan.added == 300)
            #expect(report.plan.errors.isEmpty, "\(report.plan.errors)")
            let directory = try await snapshot(stores)
            #expect(directory.users.count == 300)
            // Every OU below ou=Departments is a unit, nested as in LDAP.
            #expect(directory.units.count == 31)
            #expect(directory.users.values.filter { $0.status == .disabled }.count == 3)
            let zhang = try #require(directory.users["zhangwei"])
            #expect(zhang.displayName == "张伟")
            #expect(zhang.source == "ldap")
            let unit = try #require(directory.primaryUnit(of: "zhangwei"))
            #expect(directory.paths[unit]?.contains("/") == true)
            // seeAlso gives a second unit.
            #expect(directory.membershipsByUser.values.filter { $0.count == 2 }.count == 15)
            #expect(directory.rolesByUser.values.contains { $0.contains("auditor") })
            // Synced accounts have no local password.
            #expect(try await stores.account("zhangwei")?.credentials == nil)

            let versionAfterFirst = try await stores.directoryVersion()
            let again = try await run(.full, false)
            let dataChanges = again.plan.changes.filter {
                switch $0 {
                case .setState, .requireVersion: return false
                default: return true
                }
            }
            #expect(dataChanges.isEmpty, "\(dataChanges)")
            #expect(try await stores.directoryVersion() == versionAfterFirst)
            #expect(again.plan.added == 0 && again.plan.updated == 0 && again.plan.disabled == 0)
            #expect(try await stores.syncRuns(limit: 5).count == 2)
        }
    }

    @Test func incrementalContentSyncSeesAddModifyMoveDeleteDisable() async throws {
        try await withSync { slapd, stores, run in
            _ = try await run(.full, false)
            let before = try await snapshot(stores)
            let zhang = try #require(before.users["zhangwei"])
            let zhangUnit = try #require(before.primaryUnit(of: "zhangwei"))
            let unitDN = try #require(before.units[zhangUnit]?.externalDN)
            // Someone in another unit, to move into zhangwei's unit; someone to delete; someone to disable.
            let others = before.users.values.filter { $0.status == .active && before.primaryUnit(of: $0.username) != zhangUnit && $0.username != "zhangwei" }
                .sorted { $0.username < $1.username }
            let mover = others[0], victim = others[1], leaver = others[2]
            try await slapd.modify(ldif: """
                dn:: \(b64("uid=xinren,\(unitDN)"))
                changetype: add
                objectClass: inetOrgPerson
                uid: xinren
                cn:: \(b64("辛仁"))
                sn:: \(b64("辛"))
                displayName:: \(b64("辛仁"))
                title:: \(b64("实习生"))

                dn:: \(b64(zhang.externalDN ?? ""))
                changetype: modify
                replace: title
                title:: \(b64("高级工程师"))
                -

                dn:: \(b64(mover.externalDN ?? ""))
                changetype: modrdn
                newrdn: uid=\(mover.username)
                deleteoldrdn: 1
                newsuperior:: \(b64(unitDN))

                dn:: \(b64(victim.externalDN ?? ""))
                changetype: delete

                dn:: \(b64(leaver.externalDN ?? ""))
                changetype: modify
                replace: employeeType
                employeeType: disabled
                -

                """)
            let report = try await run(.incremental, false)
            #expect(report.outcome == "ok", "\(report.message)")
            #expect(report.plan.added == 1)
            #expect(report.plan.moved == 1)
            #expect(report.plan.disabled == 2)
            #expect(report.plan.updated >= 1)
            let after = try await snapshot(stores)
            #expect(after.users["xinren"]?.displayName == "辛仁")
            #expect(after.primaryUnit(of: "xinren") == zhangUnit)
            #expect(after.users["zhangwei"]?.title == "高级工程师")
            #expect(after.primaryUnit(of: mover.username) == zhangUnit)
            #expect(after.users[victim.username]?.status == .disabled)
            #expect(after.users[leaver.username]?.status == .disabled)
            #expect(try await stores.account(victim.username)?.disabled == true)
            // Nothing more to do.
            let quiet = try await run(.incremental, false)
            #expect(quiet.plan.added + quiet.plan.updated + quiet.plan.moved + quiet.plan.disabled == 0)
        }
    }

    @Test func incrementalByTimestampFindsDeletions() async throws {
        try await withSync({ $0.incrementalMethod = "timestamp" }) { slapd, stores, run in
            _ = try await run(.full, false)
            let before = try await snapshot(stores)
            let victim = try #require(before.users.values.filter { $0.status == .active }.sorted { $0.username < $1.username }.first)
            let zhang = try #require(before.users["zhangwei"])
            try await slapd.modify(ldif: """
                dn:: \(b64(victim.externalDN ?? ""))
                changetype: delete

                dn:: \(b64(zhang.externalDN ?? ""))
                changetype: modify
                replace: mobile
                mobile: 13900000000
                -

                """)
            let report = try await run(.incremental, false)
            #expect(report.outcome == "ok")
            #expect(report.plan.disabled == 1)
            #expect(report.plan.updated == 1)
            let after = try await snapshot(stores)
            #expect(after.users[victim.username]?.status == .disabled)
            #expect(after.users["zhangwei"]?.mobile == "13900000000")
        }
    }

    @Test func partialSyncReadsOnlyTheConfiguredSubtree() async throws {
        try await withSync({
            $0.unitBase = nil
            $0.unitFrom = "attribute"
            $0.userBases = ["ou=Contractors,dc=example,dc=com"]
            $0.groupRoles = [:]
        }) { _, stores, run in
            let report = try await run(.full, false)
            #expect(report.plan.added == 10)
            let directory = try await snapshot(stores)
            #expect(directory.users.count == 10)
            #expect(directory.users["zhangwei"] == nil)
        }
    }

    @Test func massDisableGuardRefusesAnEmptyResult() async throws {
        // A wrong filter matches nobody: the run is refused and nothing changes.
        try await withSync({ $0.maxDisablePercent = 10 }) { slapd, stores, run in
            _ = try await run(.full, false)
            var logger = Logger(label: "t")
            logger.logLevel = .critical
            var broken = configuration(slapd)
            broken.userFilter = "(objectClass=nobodyHasThis)"
            let sync = LDAPSync(configuration: broken, directory: stores, accounts: stores, logger: logger)
            let refused = try await sync.run(.full)
            #expect(refused.outcome == "refused")
            #expect(refused.plan.disabled == 297)
            #expect(try await snapshot(stores).users.values.filter { $0.status == .active }.count == 297)
            // A dry run shows the plan and changes nothing either.
            let dry = try await sync.run(.full, dryRun: true)
            #expect(dry.outcome == "dry-run")
            #expect(dry.plan.lines.contains { $0.hasPrefix("disable user") })
            // --force applies it.
            let forced = try await sync.run(.full, force: true)
            #expect(forced.outcome == "ok")
            #expect(try await snapshot(stores).users.values.filter { $0.status == .active }.isEmpty)
            let history = try await stores.syncRuns(limit: 10).map(\.outcome)
            #expect(history.contains("refused"))
        }
    }

    @Test func outageMidSyncChangesNothing() async throws {
        // A short timeout, so that the suspended server fails the run well before 10 s.
        try await withSync({ $0.timeoutMs = 2000 }) { slapd, stores, run in
            _ = try await run(.full, false)
            let version = try await stores.directoryVersion()
            try await slapd.modify(ldif: """
                dn: uid=zhangwei2,ou=Contractors,dc=example,dc=com
                changetype: add
                objectClass: inetOrgPerson
                uid: zhangwei2
                cn: x
                sn: x

                """)
            slapd.suspend()
            defer { slapd.resume() }
            let started = ContinuousClock.now
            await #expect(throws: (any Error).self) { _ = try await run(.incremental, false) }
            #expect(ContinuousClock.now - started < .seconds(10))
            #expect(try await stores.directoryVersion() == version)
            #expect(try await stores.syncRuns(limit: 1).first?.outcome == "failed")
            slapd.resume()
            // The next run resumes from the same cookie.
            let report = try await run(.incremental, false)
            #expect(report.outcome == "ok")
        }
    }

    @Test func ldapsWithTheCompanyCA() async throws {
        try await withSync(tls: true) { slapd, stores, _ in
            var logger = Logger(label: "t")
            logger.logLevel = .critical
            var config = configuration(slapd)
            config.url = slapd.ldapsURL ?? ""
            config.caFile = slapd.caPath
            let report = try await LDAPSync(configuration: config, directory: stores, accounts: stores, logger: logger).run(.full)
            #expect(report.plan.added == 300)
        }
    }
}
