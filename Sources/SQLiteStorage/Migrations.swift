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
        // 7: the organisation directory (units, users, memberships, roles), its change log and sync runs.
        """
        CREATE TABLE org_units (
            id TEXT PRIMARY KEY,
            parent TEXT,
            name TEXT NOT NULL,
            position INTEGER NOT NULL,
            description TEXT,
            always_visible INTEGER NOT NULL DEFAULT 0,
            source TEXT NOT NULL,
            external_id TEXT,
            external_dn TEXT,
            version INTEGER NOT NULL
        );
        CREATE INDEX org_units_parent ON org_units (parent);
        CREATE UNIQUE INDEX org_units_external ON org_units (external_id) WHERE external_id IS NOT NULL;
        CREATE TABLE directory_users (
            username TEXT PRIMARY KEY,
            display_name TEXT NOT NULL,
            title TEXT,
            employee_number TEXT,
            emails TEXT NOT NULL,
            phones TEXT NOT NULL,
            mobile TEXT,
            status TEXT NOT NULL,
            source TEXT NOT NULL,
            external_id TEXT,
            external_dn TEXT,
            version INTEGER NOT NULL
        );
        CREATE UNIQUE INDEX directory_users_external ON directory_users (external_id) WHERE external_id IS NOT NULL;
        CREATE TABLE memberships (
            username TEXT NOT NULL,
            unit TEXT NOT NULL,
            is_primary INTEGER NOT NULL,
            title TEXT,
            PRIMARY KEY (username, unit)
        );
        CREATE INDEX memberships_unit ON memberships (unit);
        CREATE TABLE roles (
            name TEXT PRIMARY KEY,
            permissions TEXT NOT NULL,
            description TEXT
        );
        CREATE TABLE role_grants (
            username TEXT NOT NULL,
            role TEXT NOT NULL,
            PRIMARY KEY (username, role)
        );
        CREATE TABLE directory_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        CREATE TABLE directory_log (
            version INTEGER NOT NULL,
            parent TEXT NOT NULL,
            kind TEXT NOT NULL,
            id TEXT NOT NULL
        );
        CREATE INDEX directory_log_parent ON directory_log (parent, version);
        CREATE TABLE sync_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            record BLOB NOT NULL
        );
        INSERT INTO directory_state (key, value) VALUES ('version', '0'), ('log_horizon', '0');
        INSERT INTO roles (name, permissions, description) VALUES
            ('admin', 'directory.manage,users.manage,config.manage', 'system administrator: runs the server and the directory; cannot read messages'),
            ('security-admin', 'roles.manage,keys.manage,audit.verify', 'security administrator: grants roles, manages keys'),
            ('auditor', 'audit.request,audit.read', 'auditor: reads archived messages within an approved access request'),
            ('approver', 'audit.approve', 'approves or rejects auditors'' access requests'),
            ('sms-sender', 'sms.send', 'may send SMS notifications through the gateway');
        """,
        // 8: encryption keys (wrapped), the hash-chained trail, the audit record, access requests.
        """
        CREATE TABLE data_keys (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            wrapped BLOB NOT NULL,
            master_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            retired INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE trail (
            seq INTEGER PRIMARY KEY,
            created_at REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            details TEXT NOT NULL,
            previous_hash BLOB NOT NULL,
            hash BLOB NOT NULL,
            signature BLOB
        );
        CREATE TABLE audit_messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at REAL NOT NULL,
            sender TEXT NOT NULL,
            recipients TEXT NOT NULL,
            type TEXT NOT NULL,
            room TEXT,
            stanza BLOB NOT NULL,
            attachments BLOB NOT NULL
        );
        CREATE INDEX audit_messages_time ON audit_messages (created_at);
        CREATE TABLE audit_participants (
            user TEXT NOT NULL,
            created_at REAL NOT NULL,
            message INTEGER NOT NULL
        );
        CREATE INDEX audit_participants_user ON audit_participants (user, created_at, message);
        CREATE INDEX audit_participants_message ON audit_participants (message);
        CREATE TABLE access_requests (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            status TEXT NOT NULL,
            record BLOB NOT NULL
        );
        """,
        // 9: multi-user chat (XEP-0045) persistent rooms and their affiliations. Self-contained.
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
        // 10: certificates: client certificates issued by the company CA (SASL EXTERNAL) and their revocation.
        """
        CREATE TABLE issued_certificates (
            serial TEXT PRIMARY KEY,
            username TEXT NOT NULL,
            issued_at REAL NOT NULL,
            not_before REAL NOT NULL,
            not_after REAL NOT NULL,
            revoked_at REAL,
            revocation_reason TEXT
        );
        CREATE INDEX issued_certificates_user ON issued_certificates (username, issued_at);
        """,
        // 11: a message's text is stored once. An archive copy whose text is an audit record's
        // names that record in `content` (its own `stanza` is then empty) instead of sealing and
        // storing the same bytes again; the audit participants become one b-tree (the table and
        // its two indexes were three inserts per participant).
        """
        ALTER TABLE archive ADD COLUMN content INTEGER;
        CREATE INDEX archive_content ON archive (content) WHERE content IS NOT NULL;
        CREATE TABLE audit_participants_v11 (
            user TEXT NOT NULL,
            created_at REAL NOT NULL,
            message INTEGER NOT NULL,
            PRIMARY KEY (user, created_at, message)
        ) WITHOUT ROWID;
        INSERT OR IGNORE INTO audit_participants_v11 (user, created_at, message)
            SELECT user, created_at, message FROM audit_participants;
        DROP TABLE audit_participants;
        ALTER TABLE audit_participants_v11 RENAME TO audit_participants;
        """,
        // 12: when each account was deleted, so that archive copies still on their way (the
        // running server's message journal) are not stored for an account deleted before.
        """
        CREATE TABLE deleted_accounts (
            username TEXT PRIMARY KEY,
            deleted_at REAL NOT NULL
        ) WITHOUT ROWID;
        """,
        // 13: an archive id made from its copy's position (`ArchiveUID`) is kept as its random
        // half, found by the position (the primary key): no id index entry per copy. Ids of
        // any other form stay text in `uid`, the only ones the (now partial) index holds.
        """
        ALTER TABLE archive ADD COLUMN uid_random INTEGER;
        DROP INDEX archive_uid;
        CREATE UNIQUE INDEX archive_uid ON archive (uid) WHERE uid IS NOT NULL;
        """,
        // 14: the archive's and the audit participants' JIDs as integer keys into `jid_keys`.
        // Every copy is in two per-owner indexes and every message in two participants'
        // entries: with the JID text in each entry the indexes were most of the archive's pages
        // (measured with bench/floor/archive-schema.py on 300,000 stored messages: 28% less
        // database, 32% less WAL and 27% less CPU per message stored). Keys are never reused
        // or deleted, so a key cached by a connection stays right. The upgrade copies both
        // tables once (7 s for a million archive copies and their participants on this machine).
        """
        CREATE TABLE jid_keys (
            id INTEGER PRIMARY KEY,
            jid TEXT NOT NULL UNIQUE
        );
        INSERT OR IGNORE INTO jid_keys (jid)
            SELECT owner FROM archive UNION SELECT peer FROM archive UNION SELECT user FROM audit_participants;
        CREATE TABLE archive_v14 (
            id INTEGER PRIMARY KEY,
            owner INTEGER NOT NULL,
            peer INTEGER NOT NULL,
            outgoing INTEGER NOT NULL,
            created_at REAL NOT NULL,
            stanza TEXT NOT NULL,
            uid TEXT,
            content INTEGER,
            uid_random INTEGER
        );
        INSERT INTO archive_v14 (id, owner, peer, outgoing, created_at, stanza, uid, content, uid_random)
            SELECT a.id, o.id, p.id, a.outgoing, a.created_at, a.stanza, a.uid, a.content, a.uid_random
            FROM archive a JOIN jid_keys o ON o.jid = a.owner JOIN jid_keys p ON p.jid = a.peer;
        DROP TABLE archive;
        ALTER TABLE archive_v14 RENAME TO archive;
        CREATE INDEX archive_owner ON archive (owner, id);
        CREATE INDEX archive_owner_peer ON archive (owner, peer, id);
        CREATE UNIQUE INDEX archive_uid ON archive (uid) WHERE uid IS NOT NULL;
        CREATE INDEX archive_content ON archive (content) WHERE content IS NOT NULL;
        CREATE TABLE audit_participants_v14 (
            user INTEGER NOT NULL,
            created_at REAL NOT NULL,
            message INTEGER NOT NULL,
            PRIMARY KEY (user, created_at, message)
        ) WITHOUT ROWID;
        INSERT INTO audit_participants_v14 (user, created_at, message)
            SELECT k.id, p.created_at, p.message FROM audit_participants p JOIN jid_keys k ON k.jid = p.user;
        DROP TABLE audit_participants;
        ALTER TABLE audit_participants_v14 RENAME TO audit_participants;
        """,
        // 15: the archive's per-owner index becomes runs (`ArchiveRuns`): per apply, one row
        // per owner listing the positions stored, instead of an entry per copy in
        // `archive_owner`. `program(after:)` builds the runs of the copies stored so far and
        // drops that index (`archive_owner_peer` stays, for "with" queries).
        """
        CREATE TABLE archive_runs (
            owner INTEGER NOT NULL,
            first INTEGER NOT NULL,
            last INTEGER NOT NULL,
            count INTEGER NOT NULL,
            entries BLOB NOT NULL,
            min_time REAL NOT NULL,
            max_time REAL NOT NULL,
            PRIMARY KEY (owner, first)
        ) WITHOUT ROWID;
        """,
        // 16: an audit record lists the archive copies that share its text (`ArchiveSharing`)
        // instead of an index of the copies' `content` (an entry per copy, read only by
        // retention). `program(after:)` lists them from the index and drops it. The table is
        // renamed so that a server of an older version still running after a newer command
        // upgraded the file fails its applies that hold audit records (its journal keeps the
        // entries, and the newer server stores them when it starts) rather than store copies no
        // record lists; its archive reads fail too. (The time index keeps its old name.)
        """
        ALTER TABLE audit_messages RENAME TO audit_records;
        ALTER TABLE audit_records ADD COLUMN copies BLOB;
        """,
    ]

    /// Checks done at every opening, after the steps: a database at version 15 made by a
    /// development build of step 15 (runs per (owner, peer), no time bounds) is refused by name
    /// rather than failing every apply; copies a process that writes no runs stored (an older
    /// server still running while a newer command upgraded the file) are listed.
    static func verify(_ connection: Connection) throws {
        let version = try connection.query("PRAGMA user_version") { Int($0.int(0)) }.first ?? 0
        guard version >= 15 else { return }
        let columns = Set(try connection.query("PRAGMA table_info(archive_runs)") { $0.text(1) ?? "" })
        guard columns == ["owner", "first", "last", "count", "entries", "min_time", "max_time"] else {
            throw StorageError.backend(
                "archive_runs has columns \(columns.sorted()): this database was made by an unreleased development build; start from a new data directory")
        }
        let listed = try connection.transaction { try ArchiveRuns.catchUp(in: connection) }
        if listed > 0 {
            storageLogger.warning("archive copies stored without the archive's runs (an older server writing after the upgrade) are listed now", metadata: ["copies": "\(listed)"])
        }
    }

    /// Work a step needs beyond SQL, run after its SQL in the same transaction (`steps` index).
    static func program(after step: Int, _ connection: Connection) throws {
        switch step {
        case 14: try ArchiveRuns.build(in: connection)
        case 15: try ArchiveSharing.build(in: connection)
        default: break
        }
    }

    /// Brings the schema to version `target` (all steps unless a test wants an older one).
    static func migrate(_ connection: Connection, to target: Int = steps.count) throws {
        let current = try connection.query("PRAGMA user_version") { Int($0.int(0)) }.first ?? 0
        guard current <= steps.count else {
            throw StorageError.backend(
                "database schema version \(current) is newer than this build knows (\(steps.count)); upgrade switchboard"
            )
        }
        for version in current..<max(current, min(target, steps.count)) {
            try connection.transaction {
                try connection.execute(steps[version])
                try program(after: version, connection)
                try connection.execute("PRAGMA user_version = \(version + 1)")
            }
        }
    }
}
