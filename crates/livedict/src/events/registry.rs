//! Who listens: store-wide hooks (with ids, enable/disable) and the hooks attached to entries.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

use async_lock::{Mutex, MutexGuard};
use crossbeam_utils::CachePadded;
use parking_lot::RwLock;

use super::{EntryHooks, EventKind, Hook, HookFn, HookId};

const ENTRY_STRIPES: usize = 64;

/// A registered store-wide hook.
pub(crate) struct Registered {
    pub(crate) id: HookId,
    pub(crate) hook: Hook,
    pub(crate) enabled: AtomicBool,
}

/// The hooks of one store.
pub(crate) struct Registry {
    /// Bit per [`EventKind`] with at least one enabled store-wide hook. Read by every publishing
    /// call, written only when hooks change: on its own cache line, so that the workers taking
    /// the list's lock never pull it away from the publishers' cores.
    mask: CachePadded<AtomicU8>,
    /// The kinds with an enabled store-wide hook that accepts every key (next to `mask`, written
    /// with it).
    unfiltered: AtomicU8,
    /// Copy-on-write list: readers clone the `Arc`, writers replace it.
    hooks: RwLock<Arc<Vec<Arc<Registered>>>>,
    /// Bumped whenever the list is replaced, so workers re-read it only when it changed.
    version: AtomicU64,
    next_id: AtomicU64,
    entries: EntryHookTable,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("hooks", &self.hooks.read().len())
            .field(
                "entries_with_hooks",
                &self.entries.count.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            hooks: RwLock::new(Arc::new(Vec::new())),
            mask: CachePadded::new(AtomicU8::new(0)),
            unfiltered: AtomicU8::new(0),
            version: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            entries: EntryHookTable::default(),
        }
    }
}

/// A snapshot of the store-wide hooks.
pub(crate) type HookList = Arc<Vec<Arc<Registered>>>;

/// A worker's copy of the store-wide hook list (see [`Registry::current`]).
#[derive(Default)]
pub(crate) struct HookListCache {
    version: u64,
    list: Option<HookList>,
}

impl HookListCache {
    /// A cache holding `list` until its next use, which reads the registry's list again.
    pub(crate) fn stale(list: Option<HookList>) -> Self {
        HookListCache {
            version: u64::MAX,
            list,
        }
    }

    /// The list last read (by [`Registry::current`]).
    pub(crate) fn list(&self) -> Option<&HookList> {
        self.list.as_ref()
    }

    /// The hooks of the list last read.
    pub(crate) fn hooks(&self) -> &[Arc<Registered>] {
        self.list.as_deref().map_or(&[], |list| list.as_slice())
    }
}

impl Registry {
    /// Whether an event of `kind` may interest anyone (one atomic load on the fast path).
    #[inline]
    pub(crate) fn wants(&self, kind: EventKind) -> bool {
        self.mask.load(Ordering::Acquire) & kind.bit() != 0
            || (matches!(kind, EventKind::Access | EventKind::Expire) && self.entries.in_use())
    }

    /// Whether a store-wide hook listens to `kind`.
    #[inline]
    pub(crate) fn store_wide(&self, kind: EventKind) -> bool {
        self.mask.load(Ordering::Acquire) & kind.bit() != 0
    }

    /// Whether a store-wide hook accepts an event of `kind` on `key`: two atomic loads when some
    /// hook of the kind takes every key (or none listens), else the key is checked against the
    /// filters of the kind's hooks, so that a store whose hooks watch one prefix does not queue
    /// an event for every other key.
    #[inline]
    pub(crate) fn store_wide_for(&self, kind: EventKind, key: &str) -> bool {
        let bit = kind.bit();
        if self.mask.load(Ordering::Acquire) & bit == 0 {
            return false;
        }
        if self.unfiltered.load(Ordering::Acquire) & bit != 0 {
            return true;
        }
        self.hooks
            .read()
            .iter()
            .any(|r| r.enabled.load(Ordering::Acquire) && r.hook.accepts(kind, key))
    }

    pub(crate) fn register(&self, hook: Hook) -> HookId {
        let id = HookId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut hooks = self.hooks.write();
        let mut list = Vec::clone(&hooks);
        list.push(Arc::new(Registered {
            id,
            hook,
            enabled: AtomicBool::new(true),
        }));
        *hooks = Arc::new(list);
        self.version.fetch_add(1, Ordering::Release);
        self.refresh_mask(&hooks);
        id
    }

    /// Removes the hook `id` if it was registered within the namespace `prefix` (`""`: any).
    pub(crate) fn unregister(&self, id: HookId, prefix: &str) -> bool {
        let mut hooks = self.hooks.write();
        let before = hooks.len();
        let list: Vec<_> = hooks
            .iter()
            .filter(|r| r.id != id || !r.hook.registered_within(prefix))
            .cloned()
            .collect();
        let removed = list.len() != before;
        *hooks = Arc::new(list);
        self.version.fetch_add(1, Ordering::Release);
        self.refresh_mask(&hooks);
        removed
    }

    /// Enables or disables the hook `id` if it was registered within the namespace `prefix`
    /// (`""`: any).
    pub(crate) fn set_enabled(&self, id: HookId, enabled: bool, prefix: &str) -> bool {
        let hooks = self.hooks.write();
        let found = hooks
            .iter()
            .find(|r| r.id == id && r.hook.registered_within(prefix));
        if let Some(r) = found {
            r.enabled.store(enabled, Ordering::Release);
        }
        self.refresh_mask(&hooks);
        found.is_some()
    }

    fn refresh_mask(&self, hooks: &[Arc<Registered>]) {
        let enabled = || hooks.iter().filter(|r| r.enabled.load(Ordering::Acquire));
        let unfiltered = enabled().fold(0, |m, r| m | r.hook.unfiltered_kinds());
        self.unfiltered.store(unfiltered, Ordering::Release);
        let mask = enabled().fold(0, |m, r| m | r.hook.kinds);
        self.mask.store(mask, Ordering::Release);
    }

    /// The current store-wide hooks, through a worker's cache: the list is read (under its lock)
    /// only when it changed since the cache was filled.
    pub(crate) fn current<'c>(&self, cache: &'c mut HookListCache) -> &'c [Arc<Registered>] {
        let version = self.version.load(Ordering::Acquire);
        if cache.list.is_none() || cache.version != version {
            let hooks = self.hooks.read();
            cache.version = self.version.load(Ordering::Acquire);
            cache.list = Some(hooks.clone());
        }
        cache.hooks()
    }

    pub(crate) fn entries(&self) -> &EntryHookTable {
        &self.entries
    }
}

/// Hooks attached to entries, by key, in lock stripes.
///
/// A write that attaches or replaces an entry's hooks holds the key's stripe across the backend
/// write, so the hooks always belong to the value the backend holds, whatever the interleaving of
/// writers. Stores that never use entry hooks never take these locks. The stripes are
/// `async_lock` mutexes: the sync front-end blocks on them, the async one awaits them (a stripe
/// is held across a Redis round trip, which must not block a runtime worker).
pub(crate) struct EntryHookTable {
    stripes: Box<[Mutex<HashMap<String, EntryHooks>>]>,
    hasher: foldhash::fast::RandomState,
    count: AtomicUsize,
}

impl Default for EntryHookTable {
    fn default() -> Self {
        EntryHookTable {
            stripes: (0..ENTRY_STRIPES).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            count: AtomicUsize::new(0),
        }
    }
}

/// One locked stripe of the entry hook table.
pub(crate) struct EntryLock<'a> {
    table: &'a EntryHookTable,
    map: MutexGuard<'a, HashMap<String, EntryHooks>>,
}

impl EntryHookTable {
    /// Whether any entry has hooks.
    #[inline]
    pub(crate) fn in_use(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// The stripe holding `key`: lock it through the front-end's
    /// [`Port`](crate::dict::Port), then wrap the guard with [`EntryLock::new`].
    pub(crate) fn stripe(&self, key: &str) -> &Mutex<HashMap<String, EntryHooks>> {
        let i = (self.hasher.hash_one(key) as usize) % self.stripes.len();
        &self.stripes[i]
    }

    /// Every stripe, for [`clear`](EntryLock::clear_all).
    pub(crate) fn stripes(&self) -> &[Mutex<HashMap<String, EntryHooks>>] {
        &self.stripes
    }
}

impl<'a> EntryLock<'a> {
    pub(crate) fn new(
        table: &'a EntryHookTable,
        map: MutexGuard<'a, HashMap<String, EntryHooks>>,
    ) -> Self {
        EntryLock { table, map }
    }

    /// The access hook of `key`, if any.
    pub(crate) fn on_access(&self, key: &str) -> Option<HookFn> {
        self.map.get(key).and_then(|h| h.on_access.clone())
    }

    /// Detaches every hook of this stripe (the store was cleared).
    pub(crate) fn clear_all(&mut self) {
        self.table.count.fetch_sub(self.map.len(), Ordering::AcqRel);
        self.map.clear();
    }

    /// Sets the hooks of `key` (none: removes them).
    pub(crate) fn attach(&mut self, key: &str, hooks: EntryHooks) {
        if hooks.is_empty() {
            self.detach(key);
        } else if self.map.insert(key.to_owned(), hooks).is_none() {
            self.table.count.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Removes the hooks of `key`.
    pub(crate) fn detach(&mut self, key: &str) -> Option<EntryHooks> {
        let removed = self.map.remove(key);
        if removed.is_some() {
            self.table.count.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }
}
