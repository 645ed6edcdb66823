import Foundation
import SQLiteStorage

/// Runs `body` with stores in a fresh temporary directory (removed afterwards); the tests that
/// exercise the SQLite stores without a server share it.
func withTemporaryStores(_ prefix: String, _ body: (SQLiteStores, String) async throws -> Void) async throws {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: path) }
    try await body(try SQLiteStores(directory: path), path)
}
