//! All-or-nothing batches of writes.

use std::sync::Arc;

use serde::Serialize;

use crate::backend::{BatchOp, WriteExpiry};
use crate::engine::Engine;
use crate::error::Result;
use crate::key;
use crate::namespace::Scope;
use crate::ttl::WriteOptions;

/// Writes collected to be applied all together or not at all, with
/// [`LiveDict::apply`](crate::LiveDict::apply).
///
/// Each write is validated and encoded when added, so a bad key or an oversized value fails there
/// and the batch stays as it was. No reader ever sees part of an applied batch.
///
/// # Examples
/// ```
/// use livedict::LiveDict;
///
/// let store = LiveDict::new();
/// store.set("old", &0)?;
/// let mut batch = store.batch();
/// batch.set("a", &1)?.set("b", &2)?.delete("old")?;
/// assert!(batch.set("", &3).is_err()); // refused; the batch keeps its three writes
/// store.apply(batch)?;
/// assert_eq!(store.get::<i32>("b")?, Some(2));
/// assert!(!store.contains("old")?);
/// # Ok::<(), livedict::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "a batch does nothing until applied"]
pub struct Batch {
    pub(crate) engine: Arc<Engine>,
    /// The namespace of the handle it came from: keys are under its prefix.
    scope: Option<Arc<Scope>>,
    pub(crate) ops: Vec<BatchOp>,
}

impl Batch {
    pub(crate) fn new(engine: Arc<Engine>, scope: Option<Arc<Scope>>) -> Batch {
        Batch {
            engine,
            scope,
            ops: Vec::new(),
        }
    }

    /// The full key of `key` (validated), and the expiry of `options` under this batch's
    /// namespace.
    fn place(&self, key: &str, options: &WriteOptions) -> Result<(String, WriteExpiry)> {
        key::validate(key)?;
        let (key, policy) = match &self.scope {
            Some(s) => (format!("{}{key}", s.prefix), s.policy.as_ref()),
            None => (key.to_owned(), None),
        };
        key::validate(&key)?;
        let expiry = policy.unwrap_or(self.engine.policy()).resolve(options)?;
        Ok((key, expiry))
    }

    /// A batch setting each of `pairs` (`set_many`).
    pub(crate) fn of_pairs<'k, T, I>(
        engine: Arc<Engine>,
        scope: Option<Arc<Scope>>,
        pairs: I,
    ) -> Result<Batch>
    where
        T: Serialize,
        I: IntoIterator<Item = (&'k str, T)>,
    {
        let mut batch = Batch::new(engine, scope);
        for (k, v) in pairs {
            batch.set(k, &v)?;
        }
        Ok(batch)
    }

    /// Adds a write of `value` with the store's default TTL.
    ///
    /// # Errors
    /// [`Error::InvalidKey`](crate::Error::InvalidKey), [`Error::Encode`](crate::Error::Encode),
    /// [`Error::ValueTooLarge`](crate::Error::ValueTooLarge); the batch is unchanged.
    pub fn set<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<&mut Self> {
        self.set_with(key, value, WriteOptions::new())
    }

    /// Adds a write with options (see [`WriteOptions`]).
    ///
    /// # Errors
    /// As [`set`](Self::set), plus [`Error::InvalidTtl`](crate::Error::InvalidTtl).
    pub fn set_with<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
        options: impl Into<WriteOptions>,
    ) -> Result<&mut Self> {
        let options = options.into();
        let (key, expiry) = self.place(key, &options)?;
        let value = self.engine.encode(&key, value, options.secret)?;
        self.ops.push(BatchOp::Set { key, value, expiry });
        Ok(self)
    }

    /// Adds a write of raw bytes.
    ///
    /// # Errors
    /// As [`set_with`](Self::set_with).
    pub fn set_bytes_with(
        &mut self,
        key: &str,
        value: &[u8],
        options: impl Into<WriteOptions>,
    ) -> Result<&mut Self> {
        let options = options.into();
        let (key, expiry) = self.place(key, &options)?;
        let value = self.engine.encode_raw(&key, value, options.secret)?;
        self.ops.push(BatchOp::Set { key, value, expiry });
        Ok(self)
    }

    /// Adds a deletion.
    ///
    /// # Errors
    /// [`Error::InvalidKey`](crate::Error::InvalidKey); the batch is unchanged.
    pub fn delete(&mut self, key: &str) -> Result<&mut Self> {
        let (key, _) = self.place(key, &WriteOptions::new())?;
        self.ops.push(BatchOp::Delete { key });
        Ok(self)
    }

    /// The number of writes collected.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no write was collected.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}
