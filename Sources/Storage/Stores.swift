/// The set of stores a server runs with; one implementation provides them all.
public struct Stores: Sendable {
    public var accounts: any AccountStore
    public var rosters: any RosterStore
    public var offline: any OfflineStore
    public var privateXML: any PrivateXMLStore
    public var blocklists: any BlocklistStore
    public var archive: any ArchiveStore
    public var uploads: any UploadStore
    public var pubsub: any PubSubStore
    public var directory: any DirectoryStore
    public var muc: any MUCStore
    public var audit: any AuditArchiveStore
    public var accessRequests: any AccessRequestStore
    public var trail: any TrailStore
    public var certificates: any CertificateStore
    /// Seals files at rest (uploads) when encryption is on; the stores seal their own fields.
    public var cipher: (any FieldCipher)?

    public init(
        accounts: any AccountStore, rosters: any RosterStore, offline: any OfflineStore, privateXML: any PrivateXMLStore,
        blocklists: any BlocklistStore, archive: any ArchiveStore, uploads: any UploadStore, pubsub: any PubSubStore,
        directory: any DirectoryStore, muc: any MUCStore, audit: any AuditArchiveStore, accessRequests: any AccessRequestStore,
        trail: any TrailStore, certificates: any CertificateStore
    ) {
        self.accounts = accounts
        self.rosters = rosters
        self.offline = offline
        self.privateXML = privateXML
        self.blocklists = blocklists
        self.archive = archive
        self.uploads = uploads
        self.pubsub = pubsub
        self.directory = directory
        self.muc = muc
        self.audit = audit
        self.accessRequests = accessRequests
        self.trail = trail
        self.certificates = certificates
    }
}
