import ArgumentParser
import Directory
import Foundation
import SQLiteStorage
import Server
import Storage

struct Org: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage the organisation directory: units, users, memberships, roles (works while the server runs).",
        discussion: """
            The directory is the company's tree of units (departments, teams …) and the people in it. \
            Every employee's roster shows their own units and the always-visible ones as groups named \
            by path, with presence shared without friend requests; clients search the whole company \
            (XEP-0055) by name, pinyin or initials, department, title, phone or email.

            UNIT is a unit id (shown by 'org tree --ids') or a path of names separated by '/', such \
            as 研发中心/平台部. USER is a login name (the part before @).

            A running server applies changes within directory.refresh_interval_ms (default 1 s): \
            disabled users' sessions end and new logins are refused; rosters update with pushes.

            Exit codes: 0 done, 65 refused (conflict or invalid input, with the reason), 66 not found, \
            78 configuration error, 74 storage error.

            EXAMPLES:
              switchboard org unit add 研发中心 --id rd
              switchboard org unit add 平台部 --parent 研发中心
              switchboard org user add zhangwei --name 张伟 --unit 研发中心/平台部 --title 工程师 --email zw@example.com
              switchboard org member add zhangwei 销售部 --title 顾问
              switchboard org user disable zhangwei
              switchboard org role grant auditor lisi
              switchboard org tree --members
            """,
        subcommands: [Tree.self, UnitCommand.self, UserCommand.self, Member.self, RoleCommand.self, Import.self]
    )

    /// Opens the stores and the directory service for one command.
    static func withService(_ options: ConfigOptions, _ body: (DirectoryService, ServerConfiguration) async throws -> Void) async throws {
        try await withConfigurationErrors {
            let configuration = try options.load()
            let stores = try SQLiteStores(directory: configuration.dataDir)
            var service = DirectoryService(store: stores, accounts: stores, separator: configuration.directory.groupSeparator)
            service.recorder = try cliTrail(configuration, stores).directoryRecorder(actor: cliActor())
            try await body(service, configuration)
        }
    }

    /// The common shape of commands about one user: open the service, normalise USER, act, print.
    static func withUser(
        _ options: ConfigOptions, _ user: String, _ body: (DirectoryService, String) async throws -> String
    ) async throws {
        try await withService(options) { service, _ in
            let (_, username) = try resolve(options, user)
            print(try await body(service, username))
        }
    }

    struct Tree: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the unit tree with member counts.")
        @OptionGroup var options: ConfigOptions
        @Flag(help: "Show unit ids.") var ids = false
        @Flag(help: "List each unit's members.") var members = false

        func run() async throws {
            try await Org.withService(options) { service, _ in
                let snapshot = try await service.currentSnapshot()
                func show(_ parent: String, depth: Int) {
                    for id in snapshot.children[parent] ?? [] {
                        guard let unit = snapshot.units[id] else { continue }
                        var line = String(repeating: "  ", count: depth) + unit.name
                        line += " (\(snapshot.memberCount(id)))"
                        if ids { line += " [\(id)]" }
                        if unit.alwaysVisible { line += " *always visible*" }
                        print(line)
                        if members {
                            for member in snapshot.membersByUnit[id] ?? [] {
                                let user = snapshot.users[member]
                                var entry = String(repeating: "  ", count: depth + 1) + "- \(user?.displayName ?? member) <\(member)>"
                                if user?.status == .disabled { entry += " (disabled)" }
                                print(entry)
                            }
                        }
                        show(id, depth: depth + 1)
                    }
                }
                show("", depth: 0)
                print("version \(snapshot.version): \(snapshot.units.count) units, \(snapshot.users.count) users")
            }
        }
    }

    // MARK: - Units

    struct UnitCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "unit", abstract: "Create, rename, move, reorder, change and delete units.",
            subcommands: [Add.self, Rename.self, Move.self, Reorder.self, Set.self, Del.self])

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Create a unit.")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "The unit's name.") var name: String
            @Option(help: "Parent UNIT (default: top level).") var parent: String?
            @Option(help: "Position among its siblings, 0 = first (default: last).") var position: Int?
            @Option(help: "A stable id of your choosing (letters, digits, - _ .); default generated.") var id: String?
            @Option(help: "Description.") var description: String?
            @Flag(help: "Show this unit in every employee's roster.") var alwaysVisible = false

            func run() async throws {
                try await Org.withService(options) { service, _ in
                    let unit = try await service.createUnit(
                        name: name, parent: parent, position: position, id: id, description: description, alwaysVisible: alwaysVisible)
                    print("created unit \(unit.name) [\(unit.id)]")
                }
            }
        }

        struct Rename: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Rename a unit (its id stays).")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "UNIT") var unit: String
            @Argument(help: "The new name.") var name: String

            func run() async throws {
                try await Org.withService(options) { service, _ in
                    try await service.renameUnit(unit, to: name)
                    print("renamed to \(name)")
                }
            }
        }

        struct Move: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Move a unit with everything below it.")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "UNIT") var unit: String
            @Option(help: "New parent UNIT.") var parent: String?
            @Flag(help: "Move to the top level.") var top = false
            @Option(help: "Position among the new siblings (default: last).") var position: Int?

            func validate() throws {
                if (parent == nil) == !top { throw ValidationError("give exactly one of --parent UNIT or --top") }
            }

            func run() async throws {
                try await Org.withService(options) { service, _ in
                    try await service.moveUnit(unit, to: parent, position: position)
                    print("moved")
                }
            }
        }

        struct Reorder: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Change a unit's position among its siblings.")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "UNIT") var unit: String
            @Argument(help: "New position, 0 = first.") var position: Int

            func run() async throws {
                try await Org.withService(options) { service, _ in
                    try await service.reorderUnit(unit, position: position)
                    print("reordered")
                }
            }
        }

        struct Set: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Change a unit's description or visibility.")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "UNIT") var unit: String
            @Option(help: "Description (empty to clear).") var description: String?
            @Option(help: "Show in every employee's roster: true or false.") var alwaysVisible: Bool?

            func run() async throws {
                try await Org.withService(options) { service, _ in
                    let text: String?? = description.map { $0.isEmpty ? String?.none : $0 }
                    try await service.updateUnit(unit, description: text, alwaysVisible: alwaysVisible)
                    print("updated")
                }
            }
        }

        struct Del: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Delete an empty unit (refused while it has members or child units).")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "UNIT") var unit: String

            func run() async throws {
                try await Org.withService(options) { service, _ in
                    try await service.deleteUnit(unit)
                    print("deleted")
                }
            }
        }
    }

    // MARK: - Users

    /// Details shared by `user add` and `user set`.
    struct UserDetails: ParsableArguments {
        @Option(help: "Display name, e.g. 张伟.") var name: String?
        @Option(help: "Job title.") var title: String?
        @Option(help: "Employee number.") var employeeNumber: String?
        @Option(help: "Email address (repeat for several; replaces the list).") var email: [String] = []
        @Option(help: "Office phone (repeat for several; replaces the list).") var phone: [String] = []
        @Option(help: "Mobile number.") var mobile: String?

        func apply(to user: inout DirectoryUser) {
            if let name { user.displayName = name }
            if let title { user.title = title.isEmpty ? nil : title }
            if let employeeNumber { user.employeeNumber = employeeNumber.isEmpty ? nil : employeeNumber }
            if !email.isEmpty { user.emails = email.filter { !$0.isEmpty } }
            if !phone.isEmpty { user.phones = phone.filter { !$0.isEmpty } }
            if let mobile { user.mobile = mobile.isEmpty ? nil : mobile }
        }
    }

    struct UserCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "user", abstract: "Add, change, disable, enable, delete and show directory users.",
            subcommands: [Add.self, Set.self, Disable.self, Enable.self, Del.self, Show.self, List.self])

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Add a user to the directory, with an account.",
                discussion: """
                    The account gets a password (from --password-stdin, the terminal prompt, or generated \
                    and printed) unless --no-password is given, for users who log in through the company \
                    directory (LDAP bind).
                    """)
            @OptionGroup var options: ConfigOptions
            @Argument(help: "USER (login name).") var user: String
            @OptionGroup var details: UserDetails
            @Option(help: "Primary UNIT.") var unit: String?
            @Flag(help: "Read the password from the first line of standard input.") var passwordStdin = false
            @Flag(help: "No local password (the user authenticates against LDAP).") var noPassword = false

            func validate() throws {
                if details.name == nil { throw ValidationError("--name is required") }
                if passwordStdin && noPassword { throw ValidationError("--password-stdin and --no-password exclude each other") }
            }

            func run() async throws {
                try await Org.withService(options) { service, configuration in
                    let (_, username) = try resolve(options, user)
                    var entry = DirectoryUser(username: username, displayName: details.name ?? username, source: noPassword ? "ldap" : "local")
                    details.apply(to: &entry)
                    var generated: String?
                    var credentials: StoredCredentials?
                    if !noPassword {
                        let (password, wasGenerated) = try readPassword(passwordStdin)
                        credentials = try StoredCredentials.derive(password: password)
                        if wasGenerated { generated = password }
                    }
                    try await service.createUser(entry, credentials: credentials, unit: unit)
                    print("created \(username)@\(configuration.domain)")
                    if let generated { print("password: \(generated)") }
                }
            }
        }

        struct Set: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Change a user's details (empty value clears a field).")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "USER") var user: String
            @OptionGroup var details: UserDetails

            func run() async throws {
                try await Org.withUser(options, user) { service, username in
                    try await service.updateUser(username) { details.apply(to: &$0) }
                    return "updated \(username)"
                }
            }
        }

        struct Disable: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Disable a user: their sessions end and logins are refused; data is kept.")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "USER") var user: String

            func run() async throws {
                try await Org.withUser(options, user) { service, username in
                    try await service.setStatus(username, .disabled)
                    return "disabled \(username)"
                }
            }
        }

        struct Enable: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Enable a disabled user again.")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "USER") var user: String

            func run() async throws {
                try await Org.withUser(options, user) { service, username in
                    try await service.setStatus(username, .active)
                    return "enabled \(username)"
                }
            }
        }

        struct Del: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Delete a user from the directory with their account and everything stored for it.")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "USER") var user: String

            func run() async throws {
                try await Org.withUser(options, user) { service, username in
                    try await service.deleteUser(username)
                    return "deleted \(username)"
                }
            }
        }

        struct Show: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Show a user's details, units and roles.")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "USER") var user: String

            func run() async throws {
                try await Org.withService(options) { service, configuration in
                    let (_, username) = try resolve(options, user)
                    let snapshot = try await service.currentSnapshot()
                    let entry = try service.user(username, in: snapshot)
                    print("address: \(username)@\(configuration.domain)")
                    print("name: \(entry.displayName)")
                    print("status: \(entry.status.rawValue)")
                    print("source: \(entry.source)")
                    if let title = entry.title { print("title: \(title)") }
                    if let number = entry.employeeNumber { print("employee number: \(number)") }
                    for email in entry.emails { print("email: \(email)") }
                    for phone in entry.phones { print("phone: \(phone)") }
                    if let mobile = entry.mobile { print("mobile: \(mobile)") }
                    for membership in snapshot.membershipsByUser[username] ?? [] {
                        var line = "unit: \(snapshot.paths[membership.unitID] ?? membership.unitID) [\(membership.unitID)]"
                        if membership.isPrimary { line += " primary" }
                        if let title = membership.title { line += " as \(title)" }
                        print(line)
                    }
                    for role in (snapshot.rolesByUser[username] ?? []).sorted() { print("role: \(role)") }
                }
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List directory users (of a unit), one per line.")
            @OptionGroup var options: ConfigOptions
            @Option(help: "Only members of this UNIT.") var unit: String?

            func run() async throws {
                try await Org.withService(options) { service, _ in
                    let snapshot = try await service.currentSnapshot()
                    let names: [String]
                    if let unit {
                        names = snapshot.membersByUnit[try service.unit(unit, in: snapshot).id] ?? []
                    } else {
                        names = snapshot.users.keys.sorted()
                    }
                    for name in names {
                        guard let user = snapshot.users[name] else { continue }
                        print("\(name)\t\(user.displayName)\t\(user.status.rawValue)")
                    }
                }
            }
        }
    }

    // MARK: - Memberships

    struct Member: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Put users in units and take them out (a user may sit in several; one is primary).",
            subcommands: [Add.self, Del.self])

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Add USER to UNIT (or change their title/primary there).")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "USER") var user: String
            @Argument(help: "UNIT") var unit: String
            @Flag(help: "Make this the user's primary unit.") var primary = false
            @Option(help: "Position held in this unit.") var title: String?

            func run() async throws {
                try await Org.withUser(options, user) { service, username in
                    try await service.addMembership(username, unit: unit, primary: primary, title: title)
                    return "\(username) is in \(unit)"
                }
            }
        }

        struct Del: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Take USER out of UNIT.")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "USER") var user: String
            @Argument(help: "UNIT") var unit: String

            func run() async throws {
                try await Org.withUser(options, user) { service, username in
                    try await service.removeMembership(username, unit: unit)
                    return "\(username) left \(unit)"
                }
            }
        }
    }

    // MARK: - Roles

    struct RoleCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "role",
            abstract: "Roles and their permissions: admin, security-admin, auditor, approver, sms-sender, and your own.",
            subcommands: [List.self, Add.self, Grant.self, Revoke.self])

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List roles, their permissions and holders.")
            @OptionGroup var options: ConfigOptions

            func run() async throws {
                try await Org.withService(options) { service, _ in
                    let snapshot = try await service.currentSnapshot()
                    for role in snapshot.roles.values.sorted(by: { $0.name < $1.name }) {
                        let holders = snapshot.rolesByUser.filter { $0.value.contains(role.name) }.keys.sorted()
                        print("\(role.name): \(role.permissions.joined(separator: ", "))")
                        if let description = role.description { print("  \(description)") }
                        print("  holders: \(holders.isEmpty ? "none" : holders.joined(separator: ", "))")
                    }
                }
            }
        }

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Define a role.")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "Role name.") var name: String
            @Option(help: "A permission (repeat for several).") var permission: [String] = []
            @Option(help: "Description.") var description: String?

            func run() async throws {
                try await Org.withService(options) { service, _ in
                    try await service.createRole(name, permissions: permission, description: description)
                    print("created role \(name)")
                }
            }
        }

        struct Grant: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Grant ROLE to USER.")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "ROLE") var role: String
            @Argument(help: "USER") var user: String

            func run() async throws {
                try await Org.withUser(options, user) { service, username in
                    try await service.grantRole(role, to: username)
                    return "granted \(role) to \(username)"
                }
            }
        }

        struct Revoke: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Revoke ROLE from USER.")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "ROLE") var role: String
            @Argument(help: "USER") var user: String

            func run() async throws {
                try await Org.withUser(options, user) { service, username in
                    try await service.revokeRole(role, from: username)
                    return "revoked \(role) from \(username)"
                }
            }
        }
    }
}

extension Org {
    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add or update many users from a CSV file (an HR export) in one transaction.",
            discussion: """
                The first line names the columns; known columns: username (required), name (required), \
                unit (a path such as 研发中心/平台部, created when missing), title, email, phone, mobile, \
                employee_number, status (active/disabled), password. Several emails or phones go in one \
                cell separated by ';'. Rows with a password get a local password (SCRAM keys; the \
                plain text is not kept); without, the account has none (LDAP login, or set one later \
                with 'switchboard user passwd'). Fields may be quoted ("…") per RFC 4180. Nothing \
                changes if any row is invalid.
                """)
        @OptionGroup var options: ConfigOptions
        @Argument(help: "CSV file (UTF-8), or - for standard input.") var file: String

        func run() async throws {
            try await Org.withService(options) { service, _ in
                let text: String
                if file == "-" {
                    text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
                } else {
                    do {
                        text = try String(contentsOfFile: file, encoding: .utf8)
                    } catch {
                        throw ValidationError("cannot read \(file): \(error.localizedDescription)")
                    }
                }
                let records = CSV.parse(text)
                guard let header = records.first?.map({ $0.trimmingCharacters(in: .whitespaces).lowercased() }) else {
                    throw ValidationError("\(file) is empty")
                }
                let known: Set<String> = ["username", "name", "unit", "title", "email", "phone", "mobile", "employee_number", "status", "password"]
                for column in header where !known.contains(column) {
                    throw ValidationError("unknown column '\(column)' (known: \(known.sorted().joined(separator: ", ")))")
                }
                guard header.contains("username"), header.contains("name") else {
                    throw ValidationError("the header must name at least the columns username and name")
                }
                var rows: [DirectoryService.ImportRow] = []
                for (number, record) in records.dropFirst().enumerated() where !(record.count == 1 && record[0].isEmpty) {
                    var fields: [String: String] = [:]
                    for (index, column) in header.enumerated() where index < record.count { fields[column] = record[index] }
                    func list(_ key: String) -> [String] {
                        (fields[key] ?? "").split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
                    }
                    func value(_ key: String) -> String? { fields[key].flatMap { $0.isEmpty ? nil : $0 } }
                    let status: UserStatus
                    switch value("status")?.lowercased() {
                    case nil, "active": status = .active
                    case "disabled": status = .disabled
                    case let other?: throw ValidationError("line \(number + 2): status must be active or disabled (got '\(other)')")
                    }
                    let user = DirectoryUser(
                        username: value("username") ?? "", displayName: value("name") ?? "", title: value("title"),
                        employeeNumber: value("employee_number"), emails: list("email"), phones: list("phone"), mobile: value("mobile"),
                        status: status)
                    let credentials = try value("password").map { try StoredCredentials.derive(password: $0) }
                    rows.append(DirectoryService.ImportRow(user: user, unitPath: value("unit"), credentials: credentials))
                }
                let (created, updated) = try await service.importUsers(rows)
                print("imported \(rows.count) rows: \(created) created, \(updated) updated")
            }
        }
    }
}

/// RFC 4180 CSV: comma-separated, double quotes around fields with commas, quotes or newlines.
enum CSV {
    static func parse(_ text: String) -> [[String]] {
        var records: [[String]] = []
        var record: [String] = []
        var field = ""
        var quoted = false
        var iterator = text.makeIterator()
        var pending: Character?
        while let character = pending ?? iterator.next() {
            pending = nil
            if quoted {
                if character == "\"" {
                    if let next = iterator.next() {
                        if next == "\"" { field.append("\"") } else { quoted = false; pending = next }
                    } else {
                        quoted = false
                    }
                } else {
                    field.append(character)
                }
                continue
            }
            switch character {
            case "\"" where field.isEmpty: quoted = true
            case ",": record.append(field); field = ""
            case "\n", "\r\n", "\r":
                record.append(field)
                records.append(record)
                record = []
                field = ""
            default: field.append(character)
            }
        }
        if !field.isEmpty || !record.isEmpty {
            record.append(field)
            records.append(record)
        }
        return records
    }
}
