#!/usr/bin/env python3
"""What each archive index costs SQLite, without the server.

Builds the archive and audit tables as Switchboard's schema 14 has them (schema 15 with
`--runs --keep-peer-index --extend`), fills them
with N messages between 1,000 users, then times batches (5,000 messages by default) inserted the way
the journal's apply does (one transaction; audit rows, then participants user by user, then
archive copies owner by owner) and reports, per message: SQLite's CPU, the WAL bytes written
and the checkpoint's CPU. Options drop indexes or model older schemas, so one index's cost is
the difference between two runs. Python's own per-row overhead is in the figures (about 1 µs
per row; compare runs, not absolute values). Standard library only.

    bench/floor/archive-schema.py                       # schema 14, fresh database
    bench/floor/archive-schema.py --text-jids           # schema 13: JIDs as text in every index entry
    bench/floor/archive-schema.py --text-jids --text-uids  # schema 12: every copy indexed by its text id too
    bench/floor/archive-schema.py --drop archive_owner_peer
    bench/floor/archive-schema.py --prefill 400000      # a grown database (takes minutes)
    bench/floor/archive-schema.py --page-size 8192
    bench/floor/archive-schema.py --runs                # per-owner runs instead of the two owner indexes
    bench/floor/archive-schema.py --runs --peer-runs    # … and per-(owner, peer) runs for "with" queries
    bench/floor/archive-schema.py --pairs               # fixed partners (the load generator's pattern)

--runs models a log-structured owner index: each apply writes, per owner, one row holding the
batch's positions of that owner's copies, varint-packed, instead of an entry per copy in
archive_owner and archive_owner_peer. --peer-runs adds one row per (owner, peer) per batch for
"with" queries; --keep-peer-index keeps archive_owner_peer for them instead (schema step 15);
--extend grows a key's newest run in place while it is short, as the server does.

    bench/floor/archive-schema.py --prefill 300000 --batches 10 --runs --keep-peer-index --extend   # step 15
"""
import argparse
import os
import random
import re
import sqlite3
import tempfile
import time

SCHEMA = """
CREATE TABLE audit_messages (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at REAL NOT NULL, sender TEXT NOT NULL,
    recipients TEXT NOT NULL, type TEXT NOT NULL, room TEXT, stanza BLOB NOT NULL, attachments BLOB NOT NULL);
CREATE INDEX audit_messages_time ON audit_messages (created_at);
CREATE TABLE audit_participants (user INTEGER NOT NULL, created_at REAL NOT NULL, message INTEGER NOT NULL,
    PRIMARY KEY (user, created_at, message)) WITHOUT ROWID;
CREATE TABLE archive (id INTEGER PRIMARY KEY, owner INTEGER NOT NULL, peer INTEGER NOT NULL, outgoing INTEGER NOT NULL,
    created_at REAL NOT NULL, stanza TEXT NOT NULL, uid TEXT, content INTEGER, uid_random INTEGER);
CREATE INDEX archive_owner ON archive (owner, id);
CREATE INDEX archive_owner_peer ON archive (owner, peer, id);
CREATE UNIQUE INDEX archive_uid ON archive (uid) WHERE uid IS NOT NULL;
CREATE INDEX archive_content ON archive (content) WHERE content IS NOT NULL;
"""

RUNS_SCHEMA = """
CREATE TABLE archive_runs (owner INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, count INTEGER NOT NULL,
    entries BLOB NOT NULL, PRIMARY KEY (owner, first)) WITHOUT ROWID;
CREATE TABLE audit_runs (user INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, count INTEGER NOT NULL,
    first_time REAL NOT NULL, last_time REAL NOT NULL, entries BLOB NOT NULL, PRIMARY KEY (user, first)) WITHOUT ROWID;
CREATE TABLE archive_peer_runs (owner INTEGER NOT NULL, peer INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,
    count INTEGER NOT NULL, entries BLOB NOT NULL, PRIMARY KEY (owner, peer, first)) WITHOUT ROWID;
"""


def varint(value: int, out: bytearray) -> None:
    while value >= 0x80:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)


def runs(copies, key, with_peer):
    """One row per key: (key…, first, last, count, packed (position delta[, peer]) pairs)."""
    groups = {}
    for copy in copies:
        groups.setdefault(key(copy), []).append(copy)
    rows = []
    for group_key, group in groups.items():
        packed, previous = bytearray(), group[0][0]  # as the server: differences from `first` (the first is 0)
        for copy in group:
            varint(copy[0] - previous, packed)
            previous = copy[0]
            if with_peer:
                varint(copy[2], packed)
        rows.append((*group_key, group[0][0], group[-1][0], len(group), bytes(packed)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prefill", type=int, default=0, help="messages stored before timing")
    parser.add_argument("--batches", type=int, default=20, help="timed batches")
    parser.add_argument("--batch-size", type=int, default=5000, help="messages per timed batch (one apply)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--drop", default="", help="comma list of index names to leave out")
    parser.add_argument("--text-uids", action="store_true", help="store every copy's id as text (schema 12)")
    parser.add_argument("--text-jids", action="store_true", help="owners, peers and participants as JID text (schema 13)")
    parser.add_argument("--page-size", type=int, default=4096)
    parser.add_argument("--runs", action="store_true", help="per-owner runs instead of archive_owner and archive_owner_peer")
    parser.add_argument("--peer-runs", action="store_true", help="with --runs: per-(owner, peer) runs too")
    parser.add_argument("--keep-peer-index", action="store_true",
                        help="with --runs: keep archive_owner_peer for \"with\" queries (instead of --peer-runs)")
    parser.add_argument("--extend", action="store_true",
                        help="with --runs: grow a key's newest run in place while it holds < 128 positions (the server's way)")
    parser.add_argument("--participant-runs", action="store_true", help="audit participants as per-user runs too")
    parser.add_argument("--pairs", action="store_true", help="every user writes to one fixed partner (the load generator)")
    parser.add_argument("--dir", default=None, help="where the database goes (default: a temporary directory)")
    args = parser.parse_args()

    if args.runs and args.text_jids:
        parser.error("--runs packs integer keys: not with --text-jids")
    directory = args.dir or tempfile.mkdtemp(prefix="sb-archive-schema-")
    path = os.path.join(directory, "archive.sqlite")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA page_size={args.page_size}")
    # The server's archive connection: WAL, full sync, 64 MiB cache, checkpoints at 65,536 pages.
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA cache_size=-65536")
    db.execute("PRAGMA wal_autocheckpoint=65536")
    schema = SCHEMA
    drops = list(filter(None, args.drop.split(",")))
    if args.runs or args.participant_runs:
        schema += RUNS_SCHEMA
    if args.runs:
        drops += ["archive_owner"] if args.keep_peer_index else ["archive_owner", "archive_owner_peer"]
    for name in drops:
        schema, found = re.subn(r"CREATE (UNIQUE )?INDEX %s ON[^;]*;" % re.escape(name), "", schema)
        if not found:
            parser.error(f"no index {name}")
    if args.text_jids:
        schema = schema.replace("INTEGER NOT NULL, peer INTEGER", "TEXT NOT NULL, peer TEXT").replace("user INTEGER", "user TEXT")
    db.executescript(schema)

    # Schema 14 keys every JID by an integer (the server keeps the keys it made in memory).
    users = [f"user{i}@example.test" for i in range(args.users)] if args.text_jids else list(range(1, args.users + 1))
    sealed = os.urandom(330)  # a sealed audit text of an ordinary message
    suffixes = ["".join(random.choice("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
                        for _ in range(11)) for _ in range(4096)]
    position = [1_765_000_000_000_000]
    tails = {}  # --extend: (table, key) → (first, last, count) of the key's newest run
    sql_seconds = [0.0]

    def batch(count):
        audit, participants, copies = [], [], []
        for k in range(count):
            if args.pairs:
                sender = random.randrange(len(users))
                sender, recipient = users[sender], users[sender ^ 1 if sender ^ 1 < len(users) else sender - 1]
            else:
                sender, recipient = random.sample(users, 2)
            position[0] += 3
            at = position[0]
            audit.append((at, at / 1e6, sender, recipient, "chat", None, sealed, b""))
            participants += [(sender, at / 1e6, at), (recipient, at / 1e6, at)]
            for owner, peer, outgoing, copy in ((recipient, sender, 0, at - 2), (sender, recipient, 1, at - 1)):
                if args.text_uids:
                    copies.append((copy, owner, peer, outgoing, at / 1e6, "", f"{copy:011d}{suffixes[k % 4096]}", at, None))
                else:
                    copies.append((copy, owner, peer, outgoing, at / 1e6, "", None, at, random.getrandbits(63)))
        participants.sort(key=lambda row: row[0])  # the apply groups rows by user / owner
        copies.sort(key=lambda row: row[1])
        started = time.process_time()
        if args.runs:  # packing is the server's work too: timed
            owner_runs = runs(copies, lambda c: (c[1],), with_peer=False)
            peer_runs = runs(copies, lambda c: (c[1], c[2]), with_peer=False) if args.peer_runs else []
        if args.participant_runs:
            # (user, time, id) rows → per user: (user, first, last, count, first_time, last_time, entries)
            by_user = {}
            for user, at, message in participants:
                by_user.setdefault(user, []).append((message, at))
            user_runs = []
            for user, rows in by_user.items():
                packed, previous = bytearray(), rows[0][0]
                for message, _ in rows:
                    varint(message - previous, packed)
                    previous = message
                user_runs.append((user, rows[0][0], rows[-1][0], len(rows), rows[0][1], rows[-1][1], bytes(packed)))
        db.execute("BEGIN")
        db.executemany("INSERT INTO audit_messages (id, created_at, sender, recipients, type, room, stanza, attachments)"
                       " VALUES (?,?,?,?,?,?,?,?)", audit)
        if args.participant_runs:
            db.executemany("INSERT INTO audit_runs VALUES (?,?,?,?,?,?,?)", user_runs)
        else:
            db.executemany("INSERT INTO audit_participants VALUES (?,?,?)", participants)
        db.executemany("INSERT INTO archive (id, owner, peer, outgoing, created_at, stanza, uid, content, uid_random)"
                       " VALUES (?,?,?,?,?,?,?,?,?)", copies)
        if args.runs and args.extend:
            for table, rows, width in (("archive_runs", owner_runs, 1), ("archive_peer_runs", peer_runs, 2)):
                where = " AND ".join(["owner = ?", "peer = ?"][:width])
                for row in rows:
                    key, (first, last, count, packed) = row[:width], row[width:]
                    tail = tails.get((table, key))
                    if tail and tail[2] < 128:
                        # the batch's positions follow the tail: re-encode the first delta from its last
                        grown = bytearray()
                        varint(first - tail[1], grown)
                        grown += packed[1:]  # the first delta (0) replaced by the distance from the tail
                        db.execute(f"UPDATE {table} SET last = ?, count = ?, entries = CAST(entries || ? AS BLOB)"
                                   f" WHERE {where} AND first = ?", (last, tail[2] + count, bytes(grown), *key, tail[0]))
                        tails[(table, key)] = (tail[0], last, tail[2] + count)
                    else:
                        db.execute(f"INSERT INTO {table} VALUES ({','.join('?' * (width + 4))})", row)
                        tails[(table, key)] = (first, last, count)
        elif args.runs:
            db.executemany("INSERT INTO archive_runs VALUES (?,?,?,?,?)", owner_runs)
            db.executemany("INSERT INTO archive_peer_runs VALUES (?,?,?,?,?,?)", peer_runs)
        db.execute("COMMIT")
        sql_seconds[0] += time.process_time() - started

    for _ in range(args.prefill // 20000):
        batch(20000)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint is timed on its own below
    sql_seconds[0] = 0.0
    for _ in range(args.batches):
        batch(args.batch_size)
    messages = args.batches * args.batch_size
    wal = os.path.getsize(path + "-wal")
    started = time.process_time()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    checkpoint = time.process_time() - started
    print(f"prefill {args.prefill} drop [{args.drop}] runs {args.runs} peer-runs {args.peer_runs} keep-peer-index {args.keep_peer_index} extend {args.extend} participant-runs {args.participant_runs} pairs {args.pairs} batch {args.batch_size} text-uids {args.text_uids} text-jids {args.text_jids} page {args.page_size}: "
          f"SQLite CPU {1e6 * sql_seconds[0] / messages:.1f} µs/msg, WAL {wal / messages:.0f} B/msg, "
          f"checkpoint CPU {1e6 * checkpoint / messages:.1f} µs/msg, database {os.path.getsize(path) / 1e6:.0f} MB")
    if not args.dir:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        os.rmdir(directory)


if __name__ == "__main__":
    main()
