//! The file's schema: a plain SQLite database any tool can read.
//!
//! ```sql
//! CREATE TABLE livedict_meta (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
//! -- ('format', '2')
//! CREATE TABLE livedict_entries (
//!     key         TEXT PRIMARY KEY NOT NULL,  -- the key, as given
//!     value       BLOB NOT NULL,              -- livedict header + payload
//!     deadline    INTEGER,                    -- ms since the Unix epoch; NULL: never expires
//!     sliding     INTEGER NOT NULL,           -- sliding TTL in ms; 0: a fixed deadline
//!     last_access INTEGER NOT NULL,           -- ms since the Unix epoch (to about a second)
//!     sweep_at    INTEGER                     -- when the expiry sweep looks at the row next
//! ) WITHOUT ROWID;
//! CREATE INDEX livedict_entries_sweep ON livedict_entries (sweep_at)
//!     WHERE sweep_at IS NOT NULL;
//! ```
//!
//! `sweep_at` is never later than `deadline` (it may be earlier, or set while `deadline` is NULL):
//! a write that moves a deadline later leaves it, and so leaves the index alone, which halves the
//! pages a typical overwrite dirties; the sweep moves such a row to its real deadline when it
//! meets it. Format 1 (before `sweep_at`, with an index on `deadline`) is upgraded when a store is
//! opened.

use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use super::db_error;
use crate::error::{Error, Result};

/// The format version this build writes and the newest it opens.
pub(crate) const FORMAT_VERSION: u32 = 2;

const CREATE: &str = "
CREATE TABLE IF NOT EXISTS livedict_meta (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS livedict_entries (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    deadline INTEGER,
    sliding INTEGER NOT NULL,
    last_access INTEGER NOT NULL,
    sweep_at INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS livedict_entries_sweep
    ON livedict_entries (sweep_at) WHERE sweep_at IS NOT NULL;
INSERT OR IGNORE INTO livedict_meta (name, value) VALUES ('format', '2');
";

/// Format 1 to 2: the sweep's own column and index replace the index on `deadline`.
const UPGRADE_1_TO_2: &str = "
ALTER TABLE livedict_entries ADD COLUMN sweep_at INTEGER;
UPDATE livedict_entries SET sweep_at = deadline WHERE deadline IS NOT NULL;
CREATE INDEX livedict_entries_sweep ON livedict_entries (sweep_at) WHERE sweep_at IS NOT NULL;
DROP INDEX IF EXISTS livedict_entries_deadline;
UPDATE livedict_meta SET value = '2' WHERE name = 'format';
";

/// Named locks (`Backend::try_lock`): a row per lock name ever taken, kept after release so its
/// fencing token keeps growing. Added to stores made before locks existed when they are opened.
const CREATE_LOCKS: &str = "
CREATE TABLE IF NOT EXISTS livedict_locks (
    name TEXT PRIMARY KEY NOT NULL,
    owner TEXT,
    expires_at INTEGER NOT NULL,
    fence INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Checks that `conn` is a livedict store of a format this build reads, creating the schema in an
/// empty database. Reads before it writes, so a file that is not a livedict store (or is of a
/// newer format) is refused with [`Error::Format`] and left exactly as it was.
///
/// `patience` bounds how long it retries while other processes hold the file (see [`use_wal`]).
pub(crate) fn check_or_create(conn: &mut Connection, patience: Duration) -> Result<()> {
    // Every schema object, in one statement (one snapshot: another process may be making the
    // store meanwhile).
    let objects: Vec<(String, String)> = {
        let mut stmt = conn
            .prepare("SELECT type, name FROM sqlite_schema")
            .map_err(db_error)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(db_error)?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(db_error)?
    };
    let tables: Vec<String> = objects
        .iter()
        .filter(|(kind, _)| kind == "table")
        .map(|(_, name)| name.clone())
        .collect();
    if tables.is_empty() {
        // Empty only if nothing at all was made in it: another application's database may hold
        // views or triggers before any table, or have set its identifiers (which livedict never
        // sets).
        let (application_id, user_version): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT application_id FROM pragma_application_id), \
                        (SELECT user_version FROM pragma_user_version)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db_error)?;
        let objects = objects.len();
        if (objects, application_id, user_version) != (0, 0, 0) {
            return Err(Error::Format(format!(
                "the database is not a livedict store (no tables, but {objects} schema objects, \
                 application_id {application_id}, user_version {user_version})"
            )));
        }
        // An empty database: make it a livedict store (WAL is a property of the file).
        use_wal(conn, patience)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_error)?;
        tx.execute_batch(CREATE).map_err(db_error)?;
        tx.execute_batch(CREATE_LOCKS).map_err(db_error)?;
        tx.commit().map_err(db_error)?;
        return check_format(conn);
    }
    if !tables.iter().any(|t| t == "livedict_meta") {
        return Err(Error::Format(format!(
            "the database is not a livedict store (it has tables {tables:?} and no livedict_meta)"
        )));
    }
    check_format(conn)?;
    if !tables.iter().any(|t| t == "livedict_entries") {
        return Err(Error::Format(
            "the livedict store has no livedict_entries table".into(),
        ));
    }
    use_wal(conn, patience)?;
    if !tables.iter().any(|t| t == "livedict_locks") {
        conn.execute_batch(CREATE_LOCKS).map_err(db_error)?;
    }
    if read_format(conn)? == Some(1) {
        upgrade(conn)?;
    }
    Ok(())
}

/// Upgrades a format-1 store, once: the format is read again under the write lock, so that of
/// several processes opening the old file together, one upgrades and the others find it done.
fn upgrade(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_error)?;
    if read_format(&tx)? == Some(1) {
        tx.execute_batch(UPGRADE_1_TO_2).map_err(db_error)?;
    }
    tx.commit().map_err(db_error)
}

/// Puts the file in WAL mode. Turning a new file to WAL needs it alone for a moment, and SQLite
/// answers "busy" at once, without waiting, when another process is opening the same new store
/// at the same time (several processes started together on a fresh file): retried every few
/// milliseconds for up to `patience`.
fn use_wal(conn: &Connection, patience: Duration) -> Result<()> {
    let give_up = Instant::now().checked_add(patience);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && give_up.is_none_or(|at| Instant::now() < at) =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other.map_err(db_error),
        }
    }
}

/// The store's format version, if the meta table holds a readable one.
fn read_format(conn: &Connection) -> Result<Option<u32>> {
    let format: Option<String> = conn
        .query_row(
            "SELECT value FROM livedict_meta WHERE name = 'format'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_error)?;
    Ok(format.and_then(|f| f.parse().ok()))
}

fn check_format(conn: &Connection) -> Result<()> {
    match read_format(conn)? {
        Some(v) if (1..=FORMAT_VERSION).contains(&v) => Ok(()),
        Some(v) => Err(Error::Format(format!(
            "the store has format {v}; this build reads 1..={FORMAT_VERSION}"
        ))),
        None => Err(Error::Format(
            "the store's format version is missing or unreadable".into(),
        )),
    }
}
