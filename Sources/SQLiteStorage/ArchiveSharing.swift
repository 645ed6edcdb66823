/// Which archive copies share an audit record's stored text (schema step 16).
///
/// A copy whose text is its message's audit record names the record in `archive.content` and
/// stores no text of its own (step 11). When the record's retention ends, those copies get their
/// own sealed text first. Finding them took an index on `content` — an entry per copy, two per
/// message, written on every apply and read only by retention. Instead the record lists them:
/// `audit_records.copies` holds their positions, written with the record in the same statement
/// (nothing extra per copy). A listed copy shares the text only if its `content` still names the
/// record (it may have been stored before, retracted since, or deleted with its account), so
/// retention checks each by its primary key.
enum ArchiveSharing {
    /// `positions` as zigzag varint differences from `record` (a message's copies take their
    /// positions while it is routed, next to its record's: one to three bytes each).
    static func encode(_ positions: some Sequence<Int64>, record: Int64) -> [UInt8] {
        var bytes: [UInt8] = []
        encode(positions, record: record, into: &bytes)
        return bytes
    }

    /// `encode`, appending to `bytes` (the apply reuses one buffer).
    static func encode(_ positions: some Sequence<Int64>, record: Int64, into bytes: inout [UInt8]) {
        for position in positions {
            let difference = position &- record
            Varint.append(UInt64(bitPattern: (difference << 1) ^ (difference >> 63)), to: &bytes)
        }
    }

    /// The positions `encode` listed (a malformed tail, not expected, ends the list).
    static func decode(_ bytes: [UInt8], record: Int64) -> [Int64] {
        var positions: [Int64] = []
        var index = 0
        while index < bytes.count {
            guard let zigzag = Varint.read(bytes, at: &index) else { break }
            let difference = Int64(bitPattern: zigzag >> 1) ^ -Int64(bitPattern: zigzag & 1)
            positions.append(record &+ difference)
        }
        return positions
    }

    /// The upgrade: lists the sharing copies of every record from the `content` index, then
    /// drops the index. (Records whose text no copy shares keep no list.)
    static func build(in db: Connection) throws {
        let update = try db.prepare("UPDATE audit_records SET copies = ? WHERE id = ?")
        var record: Int64?
        var positions: [Int64] = []
        func flush() throws {
            guard let record, !positions.isEmpty else { return }
            try update.bind(1, encode(positions, record: record))
            try update.bind(2, record)
            _ = try update.execute()
            positions.removeAll(keepingCapacity: true)
        }
        try db.forEachRow("SELECT content, id FROM archive WHERE content IS NOT NULL ORDER BY content, id", []) { row in
            if row.int(0) != record {
                try flush()
                record = row.int(0)
            }
            positions.append(row.int(1))
            return true
        }
        try flush()
        try db.execute("DROP INDEX IF EXISTS archive_content")
    }
}
