//! Namespaces: prefix templates with named parameters (`user:{user_id}`), nestable, each with an
//! optional default TTL its children inherit, and typed keys declared in them.
//!
//! A [`Namespace`] is a template; binding its parameters on a store
//! ([`LiveDict::namespace`](crate::LiveDict::namespace)) gives a handle with the whole dictionary
//! API on the keys under the bound prefix. Keys are `prefix:key`: a handle bound to `user:1`
//! reads and writes `user:1:name`, lists and clears only keys starting with `user:1:` (never
//! `user:10:...`), and parameter values are escaped (`1:x` and `*` are text, see
//! [`escape`](template::escape)). Events and the access policy see full keys.
//!
//! TTL precedence: a write's own TTL, else the nearest namespace TTL (its own, else its parent's,
//! ...), else the store default.

mod template;
mod typed_key;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub use typed_key::{Key, KeyInfo, KeyKind};

use crate::error::Result;
use crate::ttl::TtlPolicy;
use template::{SEPARATOR, Segment};

/// A namespace template, possibly nested in a parent. Cheap to clone.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use livedict::{LiveDict, Namespace};
///
/// let app = Namespace::new("app")?;
/// let user = app.child_with_ttl("user:{user_id}", Duration::from_secs(3600))?;
/// let session = user.child("session:{sid}")?;
/// assert_eq!(session.template(), "app:user:{user_id}:session:{sid}");
/// assert_eq!(session.ttl(), Some(Duration::from_secs(3600))); // inherited
///
/// let store = LiveDict::new();
/// let ann = store.namespace(&user, &[("user_id", "1")])?;
/// ann.set("name", &"ann")?;
/// assert_eq!(store.get::<String>("app:user:1:name")?.as_deref(), Some("ann"));
/// let s = store.namespace(&session, &[("user_id", "1"), ("sid", "abc")])?;
/// s.set("token", &7)?;
/// assert_eq!(ann.keys()?.len(), 2); // "name" and "session:abc:token"
/// assert!(store.namespace(&user, &[]).is_err()); // missing user_id
/// # Ok::<(), livedict::Error>(())
/// ```
#[derive(Clone)]
pub struct Namespace {
    node: Arc<Node>,
}

struct Node {
    /// This level's template.
    own: String,
    /// The whole template from the root.
    full: String,
    segments: Vec<Segment>,
    ttl: Option<Duration>,
    parent: Option<Namespace>,
    children: Mutex<Vec<Namespace>>,
    keys: Mutex<Vec<KeyInfo>>,
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespace")
            .field("template", &self.node.full)
            .field("ttl", &self.node.ttl)
            .finish_non_exhaustive()
    }
}

/// What [`Namespace::describe`] tells of a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamespaceInfo {
    /// The whole template from the root (`app:user:{user_id}`).
    pub template: String,
    /// Every parameter to bind, outermost first.
    pub parameters: Vec<String>,
    /// The TTL set on this namespace itself.
    pub ttl: Option<Duration>,
    /// The TTL its keys get by default: its own, else the nearest ancestor's.
    pub effective_ttl: Option<Duration>,
    /// The typed keys declared in it.
    pub keys: Vec<KeyInfo>,
    /// Its child namespaces, in the order they were made.
    pub children: Vec<NamespaceInfo>,
}

impl Namespace {
    /// A root namespace.
    ///
    /// # Errors
    /// [`Error::Namespace`](crate::Error::Namespace) for a malformed template (empty, unbalanced
    /// braces, a bad or repeated parameter name).
    pub fn new(template: &str) -> Result<Namespace> {
        Namespace::make(template, None, None)
    }

    /// A root namespace whose keys live `ttl` by default.
    ///
    /// # Errors
    /// As [`new`](Self::new); [`Error::InvalidTtl`](crate::Error::InvalidTtl) for a zero TTL.
    pub fn with_ttl(template: &str, ttl: Duration) -> Result<Namespace> {
        Namespace::make(template, Some(ttl), None)
    }

    /// A child namespace under this one (`user:{id}` under `app` is `app:user:{id}`); it inherits
    /// this namespace's TTL.
    ///
    /// # Errors
    /// As [`new`](Self::new), also when the child repeats a parameter of an ancestor.
    pub fn child(&self, template: &str) -> Result<Namespace> {
        Namespace::make(template, None, Some(self.clone()))
    }

    /// A child namespace with a TTL of its own.
    ///
    /// # Errors
    /// As [`child`](Self::child); [`Error::InvalidTtl`](crate::Error::InvalidTtl) for a zero TTL.
    pub fn child_with_ttl(&self, template: &str, ttl: Duration) -> Result<Namespace> {
        Namespace::make(template, Some(ttl), Some(self.clone()))
    }

    fn make(template: &str, ttl: Option<Duration>, parent: Option<Namespace>) -> Result<Namespace> {
        if let Some(ttl) = ttl {
            crate::ttl::to_millis(ttl)?;
        }
        let full = match &parent {
            Some(p) => format!("{}{SEPARATOR}{template}", p.node.full),
            None => template.to_owned(),
        };
        let segments = template::parse(&full)?;
        let ns = Namespace {
            node: Arc::new(Node {
                own: template.to_owned(),
                full,
                segments,
                ttl,
                parent: parent.clone(),
                children: Mutex::new(Vec::new()),
                keys: Mutex::new(Vec::new()),
            }),
        };
        if let Some(p) = parent {
            p.node.children.lock().push(ns.clone());
        }
        Ok(ns)
    }

    /// The whole template from the root.
    pub fn template(&self) -> &str {
        &self.node.full
    }

    /// This level's own template (`user:{user_id}`).
    pub fn own_template(&self) -> &str {
        &self.node.own
    }

    /// The parameters to bind, outermost first.
    pub fn parameters(&self) -> Vec<&str> {
        self.node
            .segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(p) => Some(p.as_str()),
                Segment::Text(_) => None,
            })
            .collect()
    }

    /// The default TTL of keys under this namespace: its own, else the nearest ancestor's.
    pub fn ttl(&self) -> Option<Duration> {
        self.node
            .ttl
            .or_else(|| self.node.parent.as_ref().and_then(Namespace::ttl))
    }

    /// The parent namespace, if any.
    pub fn parent(&self) -> Option<&Namespace> {
        self.node.parent.as_ref()
    }

    /// The template, parameters, TTLs, typed keys and children of this namespace.
    pub fn describe(&self) -> NamespaceInfo {
        NamespaceInfo {
            template: self.node.full.clone(),
            parameters: self.parameters().into_iter().map(str::to_owned).collect(),
            ttl: self.node.ttl,
            effective_ttl: self.ttl(),
            keys: self.node.keys.lock().clone(),
            children: self
                .node
                .children
                .lock()
                .iter()
                .map(Namespace::describe)
                .collect(),
        }
    }

    /// Declares a typed key `name` in this namespace (see [`Key`]); it appears in
    /// [`describe`](Self::describe) once declared.
    pub fn key<T>(&self, name: &str) -> Key<T> {
        Key::declare(self.clone(), name)
    }

    pub(crate) fn record_key(&self, info: KeyInfo) {
        let mut keys = self.node.keys.lock();
        match keys.iter_mut().find(|k| k.name == info.name) {
            Some(k) => *k = info,
            None => keys.push(info),
        }
    }

    /// The prefix `params` bind this template to (without the trailing separator).
    ///
    /// # Errors
    /// [`Error::Namespace`](crate::Error::Namespace) naming a missing, unknown, repeated or empty
    /// parameter.
    pub fn bind(&self, params: &[(&str, &str)]) -> Result<String> {
        template::bind(&self.node.full, &self.node.segments, params)
    }

    /// Binds a template of exactly one parameter to `value`.
    ///
    /// # Errors
    /// [`Error::Namespace`](crate::Error::Namespace) if the template does not have exactly one
    /// parameter (naming them), or as [`bind`](Self::bind).
    pub fn bind_one(&self, value: &str) -> Result<String> {
        match self.parameters().as_slice() {
            [one] => self.bind(&[(one, value)]),
            other => Err(crate::Error::Namespace(format!(
                "template {:?} has {} parameters ({}), not one",
                self.node.full,
                other.len(),
                other.join(", ")
            ))),
        }
    }
}

/// The bound prefix and TTL policy of a namespace handle.
#[derive(Debug)]
pub(crate) struct Scope {
    /// The bound prefix with its trailing separator (`app:user:1:`).
    pub(crate) prefix: String,
    /// The namespace's TTL policy, when it (or an ancestor) sets a TTL.
    pub(crate) policy: Option<TtlPolicy>,
}

impl Scope {
    /// The scope of `ns` bound to the prefix `bound`, inside `outer` (the handle it is bound on).
    pub(crate) fn of_prefix(
        outer: Option<&Scope>,
        ns: &Namespace,
        bound: String,
        store_policy: &TtlPolicy,
    ) -> Result<Scope> {
        let prefix = match outer {
            Some(o) => format!("{}{bound}{SEPARATOR}", o.prefix),
            None => format!("{bound}{SEPARATOR}"),
        };
        crate::key::validate(&prefix)?;
        let policy = match ns.ttl() {
            Some(ttl) => Some(TtlPolicy::new(Some(ttl), store_policy.sliding_by_default)?),
            None => outer.and_then(|o| o.policy),
        };
        Ok(Scope { prefix, policy })
    }
}
