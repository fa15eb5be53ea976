//! Typed keys: a key declared once with its value type, default, TTL and secrecy.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use super::Namespace;

/// How a typed key stores its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyKind {
    /// As the store stores values (encrypted if the store encrypts everything).
    Plain,
    /// Always encrypted ([`WriteOptions::secret`](crate::WriteOptions::secret)).
    Secret,
    /// An argon2id hash only ([`LiveDict::set_password`](crate::LiveDict::set_password)); the
    /// value must serialize to a string.
    Password,
}

/// What [`describe`](Namespace::describe) tells of a typed key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The key's name within its namespace.
    pub name: String,
    /// The Rust type of its value.
    pub value_type: &'static str,
    /// Its own TTL (else the namespace's applies).
    pub ttl: Option<Duration>,
    /// Whether it has a default value.
    pub has_default: bool,
    /// How it is stored.
    pub kind: KeyKind,
}

/// A key declared in a [`Namespace`] with its value type `T`, an optional default, TTL, and
/// secret or password flag. Read and write it on a handle bound to that namespace with
/// [`LiveDict::get_key`](crate::LiveDict::get_key) and
/// [`LiveDict::set_key`](crate::LiveDict::set_key).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use livedict::{Keyring, LiveDict, Namespace};
///
/// // The schema, declared once.
/// let user = Namespace::new("user:{id}")?;
/// let name = user.key::<String>("name").default("anonymous".to_string());
/// let visits = user.key::<u64>("visits").default(0);
/// let token = user.key::<String>("token").ttl(Duration::from_secs(60)).secret();
/// let password = user.key::<String>("password").password();
///
/// let store = LiveDict::builder().keyring(Keyring::generate(1)).encrypt_all(false).build()?;
/// let ann = store.namespace_one(&user, "ann")?;
/// assert_eq!(ann.get_key(&name)?, Some("anonymous".to_string())); // the default
/// ann.set_key(&name, &"Ann".to_string())?;
/// ann.set_key(&token, &"t0k3n".to_string())?;
/// ann.set_key(&password, &"hunter2".to_string())?;
/// assert_eq!(ann.get_key(&name)?.as_deref(), Some("Ann"));
/// assert_eq!(ann.get_key(&visits)?, Some(0));
/// assert_eq!(ann.verify_password("password", "hunter2")?, Some(true));
/// assert!(ann.get_key(&password).is_err()); // never readable
/// assert_eq!(user.describe().keys.len(), 4);
/// # Ok::<(), livedict::Error>(())
/// ```
pub struct Key<T> {
    namespace: Namespace,
    pub(crate) name: String,
    pub(crate) default: Option<T>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) kind: KeyKind,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("namespace", &self.namespace.template())
            .field("name", &self.name)
            .field("type", &std::any::type_name::<T>())
            .field("ttl", &self.ttl)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<T> Key<T> {
    pub(crate) fn declare(namespace: Namespace, name: &str) -> Key<T> {
        let key = Key {
            namespace,
            name: name.to_owned(),
            default: None,
            ttl: None,
            kind: KeyKind::Plain,
            _type: PhantomData,
        };
        key.record();
        key
    }

    fn record(&self) {
        self.namespace.record_key(KeyInfo {
            name: self.name.clone(),
            value_type: std::any::type_name::<T>(),
            ttl: self.ttl,
            has_default: self.default.is_some(),
            kind: self.kind,
        });
    }

    /// The value `get_key` returns when the key is missing.
    pub fn default(mut self, value: T) -> Self {
        self.default = Some(value);
        self.record();
        self
    }

    /// The TTL of every write of this key (over the namespace's).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self.record();
        self
    }

    /// Always encrypt this key's values.
    pub fn secret(mut self) -> Self {
        self.kind = KeyKind::Secret;
        self.record();
        self
    }

    /// Store only an argon2id hash of this key's values (which must serialize to strings).
    pub fn password(mut self) -> Self {
        self.kind = KeyKind::Password;
        self.record();
        self
    }

    /// The key's name within its namespace.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace it was declared in.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }
}
