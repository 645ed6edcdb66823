/// Per-user XML documents keyed by a name: private XML storage (XEP-0049) and vCards (XEP-0054).
public protocol PrivateXMLStore: Sendable {
    func document(of user: String, key: String) async throws -> String?
    /// Stores the document; `nil` deletes it.
    func setDocument(_ xml: String?, of user: String, key: String) async throws
    /// Every user's document under `key` (e.g. all archiving preferences, loaded at start).
    func documents(key: String) async throws -> [(user: String, xml: String)]
}
