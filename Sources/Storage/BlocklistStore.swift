/// XEP-0191 blocklists: the JIDs (bare, full or domain) a user has blocked.
public protocol BlocklistStore: Sendable {
    func blocklist(of user: String) async throws -> [String]
    /// Every non-empty blocklist, by user (loaded once at start-up).
    func allBlocklists() async throws -> [String: [String]]
    /// Adds entries (existing ones are kept once).
    func block(_ jids: [String], for user: String) async throws
    /// Removes the entries, or all of them when `jids` is nil.
    func unblock(_ jids: [String]?, for user: String) async throws
}
