import Foundation

/// What one RFC 4533 refreshOnly round returned.
///
/// How to apply it to a local copy:
/// - `refreshRequired`: the cookie is no longer usable; discard local state and call
///   `syncRefresh` again with `cookie: nil` (a full reload).
/// - otherwise apply `changes` (add or replace by `entryUUID`), then
///   - `refreshDeletes == true` (delete phase): remove exactly `deletedEntryUUIDs`;
///   - `refreshDeletes == false` (present phase): the server listed what still exists;
///     keep entries in `changes` or `presentEntryUUIDs` and remove every other local entry
///     (`isCompleteContent`). A first run without a cookie (`isFullRefresh`) is always complete,
///     whatever refreshDeletes says (slapd sets it TRUE there).
/// - store `cookie` for the next run.
public struct LDAPSyncResult: Sendable, Hashable {
    public enum ChangeKind: Sendable, Hashable {
        case add
        case modify
    }

    /// An entry the server sent with its attributes (new, changed, or renamed: the DN is the new one).
    public struct Change: Sendable, Hashable {
        public var kind: ChangeKind
        public var entryUUID: UUID
        public var entry: LDAPEntry
    }

    public var changes: [Change] = []
    public var deletedEntryUUIDs: [UUID] = []
    /// Unchanged entries the server reported in a present phase (state `present` or a syncIdSet
    /// with refreshDeletes FALSE).
    public var presentEntryUUIDs: [UUID] = []
    /// The cookie for the next run; nil if the server sent none (keep the previous one).
    public var cookie: [UInt8]?
    /// From the Sync Done control: TRUE when deletions were sent explicitly (delete phase).
    public var refreshDeletes = false
    /// The server answered e-syncRefreshRequired (4096): restart without a cookie.
    public var refreshRequired = false
    /// The request carried no cookie: every entry in scope was sent as a change.
    public var isFullRefresh = false

    public init() {}

    /// True when `changes` plus `presentEntryUUIDs` is the whole content of the searched scope,
    /// so anything else held locally must be deleted: after a full refresh, or an incremental
    /// one that used the present phase.
    public var isCompleteContent: Bool { !refreshRequired && (isFullRefresh || !refreshDeletes) }
}
