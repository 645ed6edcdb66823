import Foundation
@testable import SQLiteStorage

/// Runs `body` with stores in a fresh temporary directory (removed afterwards); the tests that
/// exercise the SQLite stores without a server share it.
func withTemporaryStores(_ prefix: String, _ body: (SQLiteStores, String) async throws -> Void) async throws {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: path) }
    try await body(try SQLiteStores(directory: path), path)
}

/// A database as schema `version` left it, with `sql` run on it, in a directory of its own under
/// `path` (returned): opening `SQLiteStores` there upgrades it.
func olderDatabase(under path: String, version: Int, _ sql: String) throws -> String {
    let older = path + "/older"
    try FileManager.default.createDirectory(atPath: older, withIntermediateDirectories: true)
    let connection = try Connection(path: older + "/switchboard.sqlite")
    try Migrations.migrate(connection, to: version)
    try connection.execute(sql)
    return older
}

/// Copies that name an audit record for their text but are not in its `copies` list (retention
/// would not find them and they would lose their text): always none.
func unlistedSharingCopies(in stores: SQLiteStores) async throws -> [Int64] {
    try await stores.archiveDatabase.run { db in
        let sharing = try db.query("SELECT a.id, a.content, m.copies FROM archive a JOIN audit_records m ON m.id = a.content") {
            ($0.int(0), $0.int(1), $0.blob(2))
        }
        return sharing.filter { !ArchiveSharing.decode($0.2, record: $0.1).contains($0.0) }.map(\.0)
    }
}

/// Makes the database refuse (or accept again) every audit record, as a failing disk would: the
/// journal's applies then fail and are retried.
func refuseAuditRecords(in stores: SQLiteStores, _ refuse: Bool = true) async throws {
    try await stores.archiveDatabase.run { db in
        try db.execute(
            refuse
                ? "CREATE TRIGGER refuse BEFORE INSERT ON audit_records BEGIN SELECT RAISE(ABORT, 'refused for the test'); END"
                : "DROP TRIGGER refuse")
    }
}
