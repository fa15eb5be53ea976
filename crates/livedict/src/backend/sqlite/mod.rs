//! The SQLite backend: one file, persistent, shared by the processes that open it.
//!
//! Every write is one `BEGIN IMMEDIATE` transaction on the store's writer connection, which takes
//! SQLite's write lock: writes (and the closure of an `update`) are linearizable per key across
//! threads and processes. Reads use a pool of reader connections and, in WAL mode, run in parallel
//! with each other and with the writer; a read writes only to renew a sliding deadline (last-access
//! times of reads are recorded in memory and written in batches). Expiry removal is one
//! `DELETE ... RETURNING` on the indexed `sweep_at` column, so each expired entry is returned to
//! exactly one sweeping process.
//!
//! The file is a plain SQLite database:
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
//! `sweep_at` is never later than `deadline`, and may be earlier: a write that moves a deadline
//! later (an overwrite with a TTL, a sliding renewal) leaves it and so does not touch the index
//! (an overwrite then dirties one B-tree page instead of three); the sweep moves such a row to
//! its real deadline when it reaches it.
//!
//! Crash safety: a write that returned `Ok` is committed to the WAL; a process killed at any point
//! loses none of them. [`Durability::Full`] also syncs the WAL on every commit, so that an
//! operating-system crash or power loss loses none either (at the price of one `fsync` per write).

mod schema;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::{
    Backend, BatchOp, Change, Cleared, Condition, ExpiredEntry, Expiry, KeyTtl, KeyValue, ReadMode,
    Removed, ScanEntry, Updated, WriteExpiry, Written,
};
use crate::clock::{Millis, Now};
use crate::error::{Error, Result};

/// How a read refreshes an entry's last-access time: at most once per this many milliseconds.
const ACCESS_GRANULARITY: Millis = 1000;
/// Reads record last-access times in memory; they are written in one transaction by the next
/// sweep, by `remove_inactive`, on drop, or when this many are pending.
const ACCESS_FLUSH: usize = 4096;

/// What a commit waits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous = NORMAL` in WAL mode (the default): a write that returned `Ok` survives the
    /// process being killed at any instant; an operating-system crash or power loss may lose the
    /// last writes (never corrupting the file). No `fsync` per write.
    #[default]
    Normal,
    /// `synchronous = FULL`: the WAL is synced on every commit, so a write that returned `Ok`
    /// survives power loss too. Each write waits for an `fsync`.
    Full,
}

/// Settings of [`SqliteBackend::open_with`].
#[derive(Clone, Debug)]
#[must_use]
pub struct SqliteOptions {
    durability: Durability,
    busy_timeout: Duration,
    max_readers: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Normal,
            busy_timeout: Duration::from_secs(10),
            max_readers: 8,
        }
    }
}

impl SqliteOptions {
    /// What a commit waits for (default [`Durability::Normal`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long a write waits for another process's write lock before failing (default 10 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Reader connections kept open for parallel reads (default 8).
    pub fn max_readers(mut self, n: usize) -> Self {
        self.max_readers = n.max(1);
        self
    }
}

/// The SQLite backend. Several processes may open the same file at once.
///
/// The file is a plain SQLite database (format 2) that any tool can read:
///
/// ```sql
/// CREATE TABLE livedict_meta (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
/// -- ('format', '2')
/// CREATE TABLE livedict_entries (
///     key         TEXT PRIMARY KEY NOT NULL,  -- the key, as given
///     value       BLOB NOT NULL,              -- livedict header + payload
///     deadline    INTEGER,                    -- ms since the Unix epoch; NULL: never expires
///     sliding     INTEGER NOT NULL,           -- sliding TTL in ms; 0: a fixed deadline
///     last_access INTEGER NOT NULL,           -- ms since the Unix epoch (to about a second)
///     sweep_at    INTEGER                     -- when the expiry sweep looks at the row next
/// ) WITHOUT ROWID;
/// CREATE INDEX livedict_entries_sweep ON livedict_entries (sweep_at)
///     WHERE sweep_at IS NOT NULL;
/// ```
///
/// A store of format 1 (before `sweep_at`) is upgraded in place when it is opened; earlier
/// versions of livedict then refuse it with [`Error::Format`].
///
/// # Examples
/// ```
/// use livedict::{LiveDict, SqliteBackend};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("store.db");
/// let store = LiveDict::builder().backend(SqliteBackend::open(&path)?).build()?;
/// store.set("k", &"v")?;
/// drop(store);
///
/// let reopened = LiveDict::builder().backend(SqliteBackend::open(&path)?).build()?;
/// assert_eq!(reopened.get::<String>("k")?.as_deref(), Some("v"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SqliteBackend {
    path: PathBuf,
    options: SqliteOptions,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Last-access times of reads not written yet.
    pending_access: Mutex<HashMap<String, Millis>>,
}

impl Drop for SqliteBackend {
    fn drop(&mut self) {
        if self.pending_access.get_mut().is_empty() {
            return;
        }
        #[cfg(feature = "async")]
        if tokio::runtime::Handle::try_current().is_ok() && self.flush_inside_runtime() {
            return;
        }
        if let Err(e) = self.flush_access() {
            tracing::warn!(error = %e, "livedict: could not record the last reads");
        }
    }
}

impl SqliteBackend {
    /// The last flush when the backend is dropped inside an async runtime (the last handle of
    /// an `AsyncLiveDict` dropped on a worker, or its expiry task ending), where waiting for
    /// another process's write lock, up to the busy timeout, would hold the runtime up. It is
    /// tried without waiting, so that a program that ends right after (its last handle dropped
    /// as `main` returns) has its reads recorded; a flush that would wait goes to a thread of
    /// its own with the writer connection, which the program's exit may cut short. False if
    /// that thread could not be had (the caller then flushes here).
    #[cfg(feature = "async")]
    fn flush_inside_runtime(&mut self) -> bool {
        let busy = self.options.busy_timeout;
        let _ = self.writer.get_mut().busy_timeout(Duration::ZERO);
        let flushed = self.flush_access();
        let _ = self.writer.get_mut().busy_timeout(busy);
        if flushed.is_ok() || self.pending_access.get_mut().is_empty() {
            return true;
        }
        let Ok(stand_in) = Connection::open_in_memory() else {
            return false;
        };
        let mut writer = std::mem::replace(self.writer.get_mut(), stand_in);
        let pending = std::mem::take(self.pending_access.get_mut());
        let spawned = std::thread::Builder::new()
            .name("livedict-sqlite-close".into())
            .spawn(move || {
                if let Err(e) =
                    in_write_transaction(&mut writer, |c| write_access_times(c, &pending))
                {
                    tracing::warn!(error = %e, "livedict: could not record the last reads");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "livedict: could not record the last reads");
        }
        true
    }
}

/// Runs `f` in an immediate (write) transaction on `conn`, committed if `f` succeeds.
fn in_write_transaction<T>(
    conn: &mut Connection,
    f: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_error)?;
    let out = f(&tx)?;
    tx.commit().map_err(db_error)?;
    Ok(out)
}

/// The statements of a flush of last-access times (in the caller's transaction).
fn write_access_times(c: &Connection, pending: &HashMap<String, Millis>) -> Result<()> {
    let mut stmt = c
        .prepare_cached(
            "UPDATE livedict_entries SET last_access = max(last_access, ?2) WHERE key = ?1",
        )
        .map_err(db_error)?;
    for (key, at) in pending {
        stmt.execute(params![key, *at as i64]).map_err(db_error)?;
    }
    Ok(())
}

impl fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Maps a SQLite error: "not a database" is a format error, the rest backend errors.
pub(crate) fn db_error(e: rusqlite::Error) -> Error {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && f.code == rusqlite::ErrorCode::NotADatabase
    {
        return Error::Format(format!("the file is not a SQLite database: {e}"));
    }
    Error::Backend(Box::new(e))
}

/// One row of `livedict_entries`.
struct Row {
    value: Vec<u8>,
    deadline: Option<i64>,
    sliding: i64,
    last_access: i64,
    sweep_at: Option<i64>,
}

impl Row {
    fn is_live(&self, now: Millis) -> bool {
        self.deadline.is_none_or(|d| d as u64 > now)
    }
}

fn load(conn: &Connection, key: &str) -> Result<Option<Row>> {
    conn.prepare_cached(
        "SELECT value, deadline, sliding, last_access, sweep_at FROM livedict_entries
         WHERE key = ?1",
    )
    .map_err(db_error)?
    .query_row([key], |r| {
        Ok(Row {
            value: r.get(0)?,
            deadline: r.get(1)?,
            sliding: r.get(2)?,
            last_access: r.get(3)?,
            sweep_at: r.get(4)?,
        })
    })
    .optional()
    .map_err(db_error)
}

/// Writes the row of `key`. `sweep_at` is the row's current `sweep_at` (`None` for a new row):
/// kept when it is no later than the new deadline (or there is none), which leaves the sweep's
/// index untouched; otherwise set to the new deadline.
fn upsert(
    conn: &Connection,
    key: &str,
    value: &[u8],
    deadline: Option<Millis>,
    sliding: Millis,
    now: Millis,
    sweep_at: Option<i64>,
) -> Result<()> {
    let deadline = deadline.map(|d| d as i64);
    let keep_sweep_at = sweep_at.is_some_and(|s| deadline.is_none_or(|d| s <= d));
    let sql = if keep_sweep_at {
        "INSERT INTO livedict_entries (key, value, deadline, sliding, last_access, sweep_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, deadline = excluded.deadline,
             sliding = excluded.sliding, last_access = excluded.last_access"
    } else {
        "INSERT INTO livedict_entries (key, value, deadline, sliding, last_access, sweep_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, deadline = excluded.deadline,
             sliding = excluded.sliding, last_access = excluded.last_access,
             sweep_at = excluded.sweep_at"
    };
    conn.prepare_cached(sql)
        .map_err(db_error)?
        .execute(params![key, value, deadline, sliding as i64, now as i64])
        .map_err(db_error)?;
    Ok(())
}

fn remove_row(conn: &Connection, key: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM livedict_entries WHERE key = ?1")
        .map_err(db_error)?
        .execute([key])
        .map_err(db_error)?;
    Ok(())
}

/// The write of `set`, inside a transaction.
fn write_entry(
    conn: &Connection,
    key: &str,
    value: &[u8],
    expiry: WriteExpiry,
    condition: Condition,
    now: Millis,
) -> Result<Written> {
    let existing = load(conn, key)?;
    let live = existing.as_ref().is_some_and(|r| r.is_live(now));
    if live && condition == Condition::IfAbsent {
        return Ok(Written {
            written: false,
            previous: existing.map(|r| Bytes::from(r.value)),
            expired: None,
        });
    }
    if !live && condition == Condition::IfPresent {
        if let Some(dead) = existing {
            remove_row(conn, key)?;
            return Ok(Written {
                written: false,
                previous: None,
                expired: Some(Bytes::from(dead.value)),
            });
        }
        return Ok(Written::default());
    }
    let (deadline, sliding) = match &existing {
        Some(row) if live && expiry.keep_existing => (
            row.deadline.map(|d| {
                if row.sliding > 0 {
                    now + row.sliding as u64
                } else {
                    d as u64
                }
            }),
            row.sliding as u64,
        ),
        _ => expiry.expiry.deadline_at(now),
    };
    let sweep_at = existing.as_ref().and_then(|r| r.sweep_at);
    upsert(conn, key, value, deadline, sliding, now, sweep_at)?;
    let old = existing.map(|r| Bytes::from(r.value));
    Ok(if live {
        Written {
            written: true,
            previous: old,
            expired: None,
        }
    } else {
        Written {
            written: true,
            previous: None,
            expired: old,
        }
    })
}

/// The removal of `delete`, inside a transaction.
fn delete_entry(conn: &Connection, key: &str, now: Millis) -> Result<Removed> {
    let row = conn
        .prepare_cached("DELETE FROM livedict_entries WHERE key = ?1 RETURNING value, deadline")
        .map_err(db_error)?
        .query_row([key], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<i64>>(1)?))
        })
        .optional()
        .map_err(db_error)?;
    Ok(match row {
        None => Removed::default(),
        Some((value, deadline)) if deadline.is_none_or(|d| d as u64 > now) => Removed {
            previous: Some(Bytes::from(value)),
            expired: None,
        },
        Some((value, _)) => Removed {
            previous: None,
            expired: Some(Bytes::from(value)),
        },
    })
}

impl SqliteBackend {
    /// Opens (or creates) the store in the file at `path` with the default options.
    ///
    /// # Errors
    /// [`Error::Format`] if the file is not a livedict store (another SQLite database, or not a
    /// database at all) or is of a newer format; the file is left as it was. [`Error::Backend`]
    /// for I/O errors.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (or creates) the store at `path` with `options`.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut writer = Self::connect(&path, &options)?;
        schema::check_or_create(&mut writer, options.busy_timeout)?;
        Self::configure(&writer, &options)?;
        Ok(SqliteBackend {
            path,
            options,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            pending_access: Mutex::new(HashMap::new()),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connect(path: &Path, options: &SqliteOptions) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(db_error)?;
        conn.busy_timeout(options.busy_timeout).map_err(db_error)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    fn configure(conn: &Connection, options: &SqliteOptions) -> Result<()> {
        let synchronous = match options.durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(db_error)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on the writer connection; an error (or a
    /// panic) in `f` rolls it back.
    fn write<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        in_write_transaction(&mut self.writer.lock(), f)
    }

    /// Records that `key` was read at `now`; written later, in a batch.
    fn note_access(&self, key: &str, now: Millis) -> Result<()> {
        let full = {
            let mut pending = self.pending_access.lock();
            pending.insert(key.to_owned(), now);
            pending.len() >= ACCESS_FLUSH
        };
        if full { self.flush_access() } else { Ok(()) }
    }

    /// Writes the pending last-access times in one transaction.
    fn flush_access(&self) -> Result<()> {
        if self.pending_access.lock().is_empty() {
            return Ok(());
        }
        self.write(|c| {
            // Taken under the writer's lock, so that a flush in progress on another thread (the
            // expiry driver's) is committed before any other write, `cleanup_inactive`'s
            // included, can look at the times: taken earlier, they were invisible to it for a
            // moment, and an entry just read could be removed as idle.
            let pending = std::mem::take(&mut *self.pending_access.lock());
            write_access_times(c, &pending)
        })
    }

    /// Runs `f` on a reader connection from the pool.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = match self.readers.lock().pop() {
            Some(c) => c,
            None => {
                let c = Self::connect(&self.path, &self.options)?;
                Self::configure(&c, &self.options)?;
                c
            }
        };
        let out = f(&conn);
        let mut readers = self.readers.lock();
        if readers.len() < self.options.max_readers {
            readers.push(conn);
        }
        out
    }
}

impl Backend for SqliteBackend {
    fn get(&self, key: &str, now: &Now<'_>, mode: ReadMode) -> Result<Option<Bytes>> {
        let now = now.exact();
        let Some(row) = self.read(|c| load(c, key))? else {
            return Ok(None);
        };
        if !row.is_live(now) {
            return Ok(None);
        }
        if mode == ReadMode::Peek {
            return Ok(Some(Bytes::from(row.value)));
        }
        if row.sliding == 0 {
            if row.last_access as u64 + ACCESS_GRANULARITY <= now {
                self.note_access(key, now)?;
            }
            return Ok(Some(Bytes::from(row.value)));
        }
        // Renew the sliding deadline (and the last-access time), and return the value as of that
        // write (a writer may have changed it since the read).
        let renewed = self.write(|c| {
            c.prepare_cached(
                "UPDATE livedict_entries SET last_access = ?2,
                     deadline = CASE WHEN sliding > 0 THEN ?2 + sliding ELSE deadline END
                 WHERE key = ?1 AND (deadline IS NULL OR deadline > ?2) RETURNING value",
            )
            .map_err(db_error)?
            .query_row(params![key, now as i64], |r| r.get::<_, Vec<u8>>(0))
            .optional()
            .map_err(db_error)
        })?;
        Ok(renewed.map(Bytes::from))
    }

    fn contains(&self, key: &str, now: &Now<'_>) -> Result<bool> {
        let now = now.exact();
        self.read(|c| {
            c.prepare_cached(
                "SELECT 1 FROM livedict_entries
                 WHERE key = ?1 AND (deadline IS NULL OR deadline > ?2)",
            )
            .map_err(db_error)?
            .exists(params![key, now as i64])
            .map_err(db_error)
        })
    }

    fn set(
        &self,
        key: &str,
        value: Bytes,
        expiry: WriteExpiry,
        condition: Condition,
        now: Millis,
    ) -> Result<Written> {
        self.write(|c| write_entry(c, key, &value, expiry, condition, now))
    }

    fn delete(&self, key: &str, now: Millis) -> Result<Removed> {
        self.write(|c| delete_entry(c, key, now))
    }

    fn update(
        &self,
        key: &str,
        now: Millis,
        f: &mut dyn FnMut(Option<&Bytes>) -> Result<Change>,
    ) -> Result<Updated> {
        self.write(|c| {
            let current = load(c, key)?
                .filter(|r| r.is_live(now))
                .map(|r| Bytes::from(r.value));
            match f(current.as_ref())? {
                Change::Keep => Ok(Updated {
                    previous: current,
                    expired: None,
                }),
                Change::Write { value, expiry } => {
                    Ok(write_entry(c, key, &value, expiry, Condition::Always, now)?.into())
                }
                Change::Delete => Ok(delete_entry(c, key, now)?.into()),
                Change::Replace { value } => {
                    if current.is_some() {
                        c.prepare_cached("UPDATE livedict_entries SET value = ?2 WHERE key = ?1")
                            .map_err(db_error)?
                            .execute(params![key, &value[..]])
                            .map_err(db_error)?;
                    }
                    Ok(Updated {
                        previous: current,
                        expired: None,
                    })
                }
            }
        })
    }

    fn ttl(&self, key: &str, now: Millis) -> Result<KeyTtl> {
        let row = self.read(|c| load(c, key))?;
        Ok(match row.filter(|r| r.is_live(now)) {
            None => KeyTtl::Missing,
            Some(Row { deadline: None, .. }) => KeyTtl::Never,
            Some(Row {
                deadline: Some(d), ..
            }) => KeyTtl::Remaining(Duration::from_millis(d as u64 - now)),
        })
    }

    fn try_lock(&self, name: &str, owner: &str, lease: Millis, now: Millis) -> Result<Option<u64>> {
        self.write(|c| {
            let held: Option<(Option<String>, i64, i64)> = c
                .prepare_cached(
                    "SELECT owner, expires_at, fence FROM livedict_locks WHERE name = ?1",
                )
                .map_err(db_error)?
                .query_row(params![name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
                .map_err(db_error)?;
            let fence = match held {
                Some((Some(_), expires_at, _)) if expires_at as u64 > now => return Ok(None),
                Some((_, _, fence)) => fence as u64 + 1,
                None => 1,
            };
            c.prepare_cached(
                "INSERT INTO livedict_locks (name, owner, expires_at, fence) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET owner = ?2, expires_at = ?3, fence = ?4",
            )
            .map_err(db_error)?
            .execute(params![
                name,
                owner,
                now.saturating_add(lease).min(i64::MAX as u64) as i64,
                fence as i64
            ])
            .map_err(db_error)?;
            Ok(Some(fence))
        })
    }

    fn unlock(&self, name: &str, owner: &str, now: Millis) -> Result<bool> {
        self.write(|c| {
            let released = c
                .prepare_cached(
                    "UPDATE livedict_locks SET owner = NULL, expires_at = 0
                     WHERE name = ?1 AND owner = ?2 AND expires_at > ?3",
                )
                .map_err(db_error)?
                .execute(params![name, owner, now as i64])
                .map_err(db_error)?;
            Ok(released > 0)
        })
    }

    fn set_expiry(&self, key: &str, expiry: Expiry, now: Millis) -> Result<bool> {
        let (deadline, sliding) = expiry.deadline_at(now);
        self.write(|c| {
            let changed = c
                .prepare_cached(
                    "UPDATE livedict_entries SET deadline = ?2, sliding = ?3,
                         sweep_at = CASE WHEN sweep_at <= ?2 THEN sweep_at ELSE ?2 END
                     WHERE key = ?1 AND (deadline IS NULL OR deadline > ?4)",
                )
                .map_err(db_error)?
                .execute(params![
                    key,
                    deadline.map(|d| d as i64),
                    sliding as i64,
                    now as i64
                ])
                .map_err(db_error)?;
            Ok(changed > 0)
        })
    }

    fn scan(&self, prefix: &str, now: Millis, with_values: bool) -> Result<Vec<ScanEntry>> {
        self.read(|c| {
            // Keys come in order from the primary key: stop at the first one past the prefix.
            let mut stmt = c
                .prepare_cached(
                    "SELECT key, value, deadline FROM livedict_entries
                     WHERE key >= ?1 ORDER BY key",
                )
                .map_err(db_error)?;
            let mut rows = stmt.query([prefix]).map_err(db_error)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(db_error)? {
                let key: String = r.get(0).map_err(db_error)?;
                if !key.starts_with(prefix) {
                    break;
                }
                let deadline: Option<i64> = r.get(2).map_err(db_error)?;
                if deadline.is_some_and(|d| d as u64 <= now) {
                    continue;
                }
                let value = if with_values {
                    Some(Bytes::from(r.get::<_, Vec<u8>>(1).map_err(db_error)?))
                } else {
                    None
                };
                out.push((key, value));
            }
            Ok(out)
        })
    }

    fn len(&self, now: Millis) -> Result<usize> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT count(*) FROM livedict_entries WHERE deadline IS NULL OR deadline > ?1",
            )
            .map_err(db_error)?
            .query_row([now as i64], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(db_error)
        })
    }

    fn clear(&self, now: Millis) -> Result<Cleared> {
        self.write(|c| {
            let expired = remove_due(c, now, i64::MAX)?;
            let removed = c
                .execute("DELETE FROM livedict_entries", [])
                .map_err(db_error)?;
            Ok(Cleared { removed, expired })
        })
    }

    fn pop_any(&self, now: Millis) -> Result<Option<KeyValue>> {
        self.write(|c| {
            c.prepare_cached(
                "DELETE FROM livedict_entries WHERE key = (
                     SELECT key FROM livedict_entries
                     WHERE deadline IS NULL OR deadline > ?1 LIMIT 1)
                 RETURNING key, value",
            )
            .map_err(db_error)?
            .query_row([now as i64], |r| {
                Ok((r.get::<_, String>(0)?, Bytes::from(r.get::<_, Vec<u8>>(1)?)))
            })
            .optional()
            .map_err(db_error)
        })
    }

    fn apply_batch(&self, ops: Vec<BatchOp>, now: Millis) -> Result<Vec<Removed>> {
        self.write(|c| {
            ops.into_iter()
                .map(|op| match op {
                    BatchOp::Set { key, value, expiry } => {
                        Ok(write_entry(c, &key, &value, expiry, Condition::Always, now)?.into())
                    }
                    BatchOp::Delete { key } => delete_entry(c, &key, now),
                })
                .collect()
        })
    }

    fn sweep(&self, now: Millis, limit: usize, out: &mut Vec<ExpiredEntry>) -> Result<bool> {
        self.flush_access()?;
        // Look before taking the write lock: most polls find nothing due.
        let due = self.read(|c| {
            c.prepare_cached("SELECT 1 FROM livedict_entries WHERE sweep_at <= ?1 LIMIT 1")
                .map_err(db_error)?
                .exists([now as i64])
                .map_err(db_error)
        })?;
        if !due {
            return Ok(false);
        }
        let (expired, moved) = self.write(|c| take_expired(c, now, limit as i64))?;
        // Each call that says "more" moved or removed `limit` rows: the caller's loop ends.
        let more = expired.len() + moved >= limit;
        out.extend(expired);
        Ok(more)
    }

    fn next_deadline(&self) -> Result<Option<Millis>> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT min(sweep_at) FROM livedict_entries WHERE sweep_at IS NOT NULL",
            )
            .map_err(db_error)?
            .query_row([], |r| r.get::<_, Option<i64>>(0))
            .map(|d| d.map(|d| d as u64))
            .map_err(db_error)
        })
    }

    fn remove_inactive(
        &self,
        prefix: &str,
        idle_since: Millis,
        now: Millis,
    ) -> Result<Vec<KeyValue>> {
        self.flush_access()?;
        self.write(|c| {
            let mut stmt = c
                .prepare_cached(
                    "DELETE FROM livedict_entries
                     WHERE (deadline IS NULL OR deadline > ?1) AND last_access + ?3 <= ?2
                       AND substr(key, 1, length(?4)) = ?4
                     RETURNING key, value",
                )
                .map_err(db_error)?;
            let rows = stmt
                .query_map(
                    params![
                        now as i64,
                        idle_since as i64,
                        ACCESS_GRANULARITY as i64,
                        prefix
                    ],
                    |r| Ok((r.get::<_, String>(0)?, Bytes::from(r.get::<_, Vec<u8>>(1)?))),
                )
                .map_err(db_error)?;
            rows.collect::<std::result::Result<_, _>>()
                .map_err(db_error)
        })
    }

    fn is_shared(&self) -> bool {
        true
    }
}

/// One sweep: moves up to `limit` rows the sweep reached early (their deadline moved later, or
/// went) to their deadline, then removes up to `limit` due ones (see [`remove_due`]). Returns
/// them, and how many rows it moved.
fn take_expired(c: &Connection, now: Millis, limit: i64) -> Result<(Vec<ExpiredEntry>, usize)> {
    let moved = c
        .prepare_cached(
            "UPDATE livedict_entries SET sweep_at = deadline
         WHERE key IN (SELECT key FROM livedict_entries
                       WHERE sweep_at <= ?1 ORDER BY sweep_at LIMIT ?2)
           AND (deadline IS NULL OR deadline > ?1)",
        )
        .map_err(db_error)?
        .execute(params![now as i64, limit])
        .map_err(db_error)?;
    Ok((remove_due(c, now, limit)?, moved))
}

/// Deletes the entries due at `now` among the first `limit` rows of the sweep index (earliest
/// first) and returns them: one statement, so each is returned to exactly one caller, whatever
/// the number of sweeping processes. With no limit (`clear`), every due entry: early rows need
/// no moving then.
fn remove_due(c: &Connection, now: Millis, limit: i64) -> Result<Vec<ExpiredEntry>> {
    let mut stmt = c
        .prepare_cached(
            "DELETE FROM livedict_entries
             WHERE key IN (SELECT key FROM livedict_entries
                           WHERE sweep_at <= ?1 ORDER BY sweep_at LIMIT ?2)
               AND deadline <= ?1
             RETURNING key, value, deadline",
        )
        .map_err(db_error)?;
    let rows = stmt
        .query_map(params![now as i64, limit], |r| {
            Ok(ExpiredEntry {
                key: std::sync::Arc::from(r.get::<_, String>(0)?),
                value: Bytes::from(r.get::<_, Vec<u8>>(1)?),
                deadline: r.get::<_, i64>(2)? as u64,
            })
        })
        .map_err(db_error)?;
    rows.collect::<std::result::Result<_, _>>()
        .map_err(db_error)
}
