import Storage

/// Versioned schema: migration N brings `PRAGMA user_version` from N-1 to N. Append only.
enum Migrations {
    static let steps: [String] = [
        // 1: accounts, rosters, offline messages, private XML.
        """
        CREATE TABLE accounts (
            username TEXT PRIMARY KEY,
            credentials BLOB NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL
        );
        CREATE TABLE roster_versions (
            user TEXT PRIMARY KEY,
            version INTEGER NOT NULL
        );
        CREATE TABLE roster_items (
            user TEXT NOT NULL,
            contact TEXT NOT NULL,
            item BLOB NOT NULL,
            PRIMARY KEY (user, contact)
        );
        CREATE TABLE offline_messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user TEXT NOT NULL,
            stanza TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX offline_messages_user ON offline_messages (user, id);
        CREATE TABLE private_xml (
            user TEXT NOT NULL,
            key TEXT NOT NULL,
            xml TEXT NOT NULL,
            PRIMARY KEY (user, key)
        );
        """,
        // 2: XEP-0191 blocklists.
        """
        CREATE TABLE blocklist (
            user TEXT NOT NULL,
            jid TEXT NOT NULL,
            PRIMARY KEY (user, jid)
        );
        """,
        // 3: message archive (XEP-0313). id is the archive id, increasing with time.
        """
        CREATE TABLE archive (
            id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL,
            peer TEXT NOT NULL,
            outgoing INTEGER NOT NULL,
            created_at REAL NOT NULL,
            stanza TEXT NOT NULL
        );
        CREATE INDEX archive_owner ON archive (owner, id);
        CREATE INDEX archive_owner_peer ON archive (owner, peer, id);
        """,
        // 4: HTTP file upload (XEP-0363) metadata.
        """
        CREATE TABLE uploads (
            token TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            filename TEXT NOT NULL,
            size INTEGER NOT NULL,
            content_type TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX uploads_owner ON uploads (owner);
        CREATE INDEX uploads_created ON uploads (created_at);
        """,
        // 5: random archive ids shown to clients (the integer id only orders the archive).
        """
        ALTER TABLE archive ADD COLUMN uid TEXT;
        CREATE UNIQUE INDEX archive_uid ON archive (uid);
        """,
        // 6: personal eventing (XEP-0163) nodes and items.
        """
        CREATE TABLE pep_nodes (
            owner TEXT NOT NULL,
            node TEXT NOT NULL,
            access_model TEXT NOT NULL,
            max_items INTEGER NOT NULL,
            PRIMARY KEY (owner, node)
        );
        CREATE TABLE pep_items (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            owner TEXT NOT NULL,
            node TEXT NOT NULL,
            item_id TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (owner, node, item_id)
        );
        CREATE INDEX pep_items_node ON pep_items (owner, node, seq);
        """,
        // 7: multi-user chat (XEP-0045) persistent rooms and their affiliations. Self-contained.
        """
        CREATE TABLE muc_rooms (
            jid TEXT PRIMARY KEY,
            config TEXT NOT NULL,
            subject TEXT,
            subject_by TEXT,
            created_at REAL NOT NULL
        );
        CREATE TABLE muc_affiliations (
            room TEXT NOT NULL,
            jid TEXT NOT NULL,
            affiliation TEXT NOT NULL,
            PRIMARY KEY (room, jid)
        );
        """,
    ]

    static func migrate(_ connection: Connection) throws {
        let current = try connection.query("PRAGMA user_version") { Int($0.int(0)) }.first ?? 0
        guard current <= steps.count else {
            throw StorageError.backend(
                "database schema version \(current) is newer than this build knows (\(steps.count)); upgrade switchboard"
            )
        }
        for version in current..<steps.count {
            try connection.transaction {
                try connection.execute(steps[version])
                try connection.execute("PRAGMA user_version = \(version + 1)")
            }
        }
    }
}
