//! Conformance cases of SPEC section 4: events and hooks. Non-blocking behaviour is proven with
//! synchronisation (gates, barriers, counters), never by timing alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use livedict::{
    Cause, Error, Event, EventKind, EventSettings, Hook, QueueFullPolicy, Result, WriteOptions,
};
use parking_lot::{Condvar, Mutex};

use super::{Harness, Store, eventually};

const WAIT: Duration = Duration::from_secs(20);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// What a hook saw of one event.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub kind: EventKind,
    pub cause: Cause,
    pub key: String,
    pub value: Option<serde_json::Value>,
    pub previous: Option<serde_json::Value>,
}

/// Collects the events a hook receives and lets a test wait for them.
#[derive(Default)]
pub struct Collector {
    seen: Mutex<Vec<Seen>>,
    cv: Condvar,
}

impl Collector {
    pub fn new() -> Arc<Collector> {
        Arc::new(Collector::default())
    }

    /// A hook function recording into this collector.
    pub fn hook(
        self: &Arc<Self>,
    ) -> impl Fn(&Event) -> livedict::HookResult + Send + Sync + 'static {
        let me = self.clone();
        move |e: &Event| {
            let seen = Seen {
                kind: e.kind(),
                cause: e.cause(),
                key: e.key().to_owned(),
                value: e.value::<serde_json::Value>()?,
                previous: e.previous::<serde_json::Value>()?,
            };
            me.seen.lock().push(seen);
            me.cv.notify_all();
            Ok(())
        }
    }

    /// Waits until at least `n` events arrived (bounded), and returns them all.
    pub fn wait(&self, n: usize) -> Vec<Seen> {
        let give_up = Instant::now() + WAIT;
        let mut seen = self.seen.lock();
        while seen.len() < n {
            if self.cv.wait_until(&mut seen, give_up).timed_out() {
                panic!("expected {n} events, got {}: {:?}", seen.len(), &*seen);
            }
        }
        seen.clone()
    }

    pub fn now(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

/// A gate hooks can be held at until the test opens it.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    waiting: AtomicUsize,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }
    pub fn pass(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock();
        while !*open {
            self.cv.wait(&mut open);
        }
    }
    pub fn open(&self) {
        *self.open.lock() = true;
        self.cv.notify_all();
    }
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

fn json(v: impl serde::Serialize) -> Option<serde_json::Value> {
    Some(serde_json::to_value(v).unwrap())
}

pub fn set_events_carry_new_and_previous_values(h: &Harness) -> Result<()> {
    let store = h.store();
    let c = Collector::new();
    store.on(EventKind::Set, c.hook())?;
    store.set("k", &1)?;
    store.set("k", &2)?;
    store.incr("k", 3)?;
    store.update("k", |v: Option<i64>| v.unwrap() * 2)?;
    store.set_many([("a", 1), ("b", 2)])?;
    let seen = c.wait(6);
    // Events of one key arrive in order; across keys, in any order.
    let values: Vec<_> = seen
        .iter()
        .filter(|s| s.key == "k")
        .map(|s| (s.key.as_str(), s.previous.clone(), s.value.clone()))
        .collect();
    assert_eq!(values[0], ("k", None, json(1)));
    assert_eq!(values[1], ("k", json(1), json(2)));
    assert_eq!(values[2], ("k", json(2), json(5)));
    assert_eq!(values[3], ("k", json(5), json(10)));
    assert!(
        seen.iter()
            .all(|s| s.kind == EventKind::Set && s.cause == Cause::Explicit)
    );
    Ok(())
}

pub fn access_events_only_for_hits_not_peeks(h: &Harness) -> Result<()> {
    let store = h.store();
    let c = Collector::new();
    store.on([EventKind::Access, EventKind::Delete], c.hook())?;
    store.set("k", &"v")?;
    store.get::<String>("missing")?;
    store.peek::<String>("k")?;
    store.contains("k")?;
    store.get::<String>("k")?;
    store.get_many::<String>(&["k", "missing"])?;
    // A marker on the same key: events of a key arrive in order, so once it is here, every
    // access event there was has arrived too.
    store.delete("k")?;
    let seen = c.wait(3);
    assert_eq!(seen.last().map(|s| s.kind), Some(EventKind::Delete));
    let accesses: Vec<_> = seen
        .iter()
        .filter(|s| s.kind == EventKind::Access)
        .collect();
    assert_eq!(accesses.len(), 2, "{seen:?}");
    assert!(
        accesses
            .iter()
            .all(|s| s.key == "k" && s.value == json("v"))
    );
    Ok(())
}

pub fn delete_events_only_when_something_was_deleted(h: &Harness) -> Result<()> {
    // One lane: every event in publication order, so the final marker bounds them all.
    let store = h.build(|b| b.events(EventSettings::default().workers(1)));
    let c = Collector::new();
    store.on(EventKind::Delete, c.hook())?;
    assert!(!store.delete("missing")?);
    store.set("a", &1)?;
    store.set("b", &2)?;
    store.set("c", &3)?;
    assert!(store.delete("a")?);
    assert_eq!(store.pop::<i32>("b")?, Some(2));
    store.try_update("c", |_: Option<i32>| Ok::<_, Error>(None))?;
    // Racing deletes of one key: exactly one event.
    store.set("race", &0)?;
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (s, b) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                s.delete("race").unwrap()
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|w| *w)
        .count();
    assert_eq!(wins, 1);
    let seen = c.wait(4);
    let mut keys: Vec<_> = seen.iter().map(|s| s.key.clone()).collect();
    keys.sort();
    assert_eq!(keys, ["a", "b", "c", "race"]);
    assert_eq!(seen.iter().find(|s| s.key == "b").unwrap().value, json(2));
    // Nothing more arrives.
    store.set("marker", &1)?;
    store.delete("marker")?;
    assert_eq!(c.wait(5).len(), 5);
    Ok(())
}

pub fn expire_fires_exactly_once_with_last_value(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    let c = Collector::new();
    store.on(EventKind::Expire, c.hook())?;
    store.set_with("a", &"first", secs(5))?;
    store.set_with("a", &"last", secs(10))?; // overwritten: no event for "first"
    store.set_with("deleted", &1, secs(10))?;
    store.delete("deleted")?; // deleted: no expire event
    store.set_with("persisted", &1, secs(10))?;
    store.persist("persisted")?;
    for i in 0..100 {
        store.set_with(&format!("bulk{i}"), &i, secs(10))?;
    }
    store.set_with("found-dead", &"old", secs(10))?;
    clock.advance(secs(10));
    store.set("found-dead", &"new")?; // may find it dead before the driver: still one event
    let seen = c.wait(102);
    assert!(eventually(secs(5), || store.stats().expirations == 102));
    let seen_after = c.wait(102);
    assert_eq!(
        seen_after.len(),
        102,
        "no duplicate events: {:?}",
        &seen_after[102.min(seen_after.len())..]
    );
    let a = seen.iter().find(|s| s.key == "a").unwrap();
    assert_eq!(a.value, json("last"));
    assert_eq!(a.cause, Cause::Expired);
    assert_eq!(
        seen.iter().find(|s| s.key == "found-dead").unwrap().value,
        json("old")
    );
    assert!(
        !seen
            .iter()
            .any(|s| s.key == "deleted" || s.key == "persisted")
    );
    assert_eq!(store.get::<String>("found-dead")?.as_deref(), Some("new"));
    Ok(())
}

pub fn events_of_one_key_arrive_in_order(h: &Harness) -> Result<()> {
    let store = h.build(|b| b.events(EventSettings::default().workers(4)));
    let c = Collector::new();
    store.on(EventKind::Set, c.hook())?;
    let n = 2000;
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let s = store.clone();
            std::thread::spawn(move || -> Result<()> {
                for i in 0..n {
                    s.set(&format!("key{t}"), &i)?;
                }
                Ok(())
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap()?;
    }
    let seen = c.wait(4 * n);
    for t in 0..4 {
        let key = format!("key{t}");
        let values: Vec<i64> = seen
            .iter()
            .filter(|s| s.key == key)
            .map(|s| s.value.clone().unwrap().as_i64().unwrap())
            .collect();
        assert_eq!(
            values,
            (0..n as i64).collect::<Vec<_>>(),
            "events of {key} out of order"
        );
    }
    Ok(())
}

pub fn hooks_filter_by_kind_key_and_prefix(h: &Harness) -> Result<()> {
    let store = h.store();
    let (all, exact, prefix, two) = (
        Collector::new(),
        Collector::new(),
        Collector::new(),
        Collector::new(),
    );
    store.on(EventKind::ALL, all.hook())?;
    // A sync hook on either front-end, and one made by the store (async on AsyncLiveDict).
    store.hook(Hook::new(EventKind::Set, exact.hook()).key("user:1"))?;
    store.hook(
        store
            .new_hook(EventKind::Set, prefix.hook())
            .prefix("user:"),
    )?;
    store.on([EventKind::Set, EventKind::Delete], two.hook())?;
    store.set("user:1", &1)?;
    store.set("user:10", &1)?;
    store.set("other", &1)?;
    store.get::<i32>("other")?;
    store.delete("other")?;
    assert_eq!(all.wait(5).len(), 5);
    assert_eq!(two.wait(4).len(), 4);
    let mut p: Vec<_> = prefix.wait(2).into_iter().map(|s| s.key).collect();
    p.sort();
    assert_eq!(p, ["user:1", "user:10"]);
    let e = exact.wait(1);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].key, "user:1");
    Ok(())
}

pub fn hooks_disable_enable_unregister(h: &Harness) -> Result<()> {
    let store = h.store();
    let (c, marker) = (Collector::new(), Collector::new());
    let id = store.on(EventKind::Set, c.hook())?;
    store.on(EventKind::Set, marker.hook())?;
    store.set("one", &1)?;
    c.wait(1);
    assert!(store.disable_hook(id));
    store.set("two", &2)?;
    marker.wait(2);
    assert!(store.enable_hook(id));
    store.set("three", &3)?;
    marker.wait(3);
    assert!(store.unregister_hook(id));
    assert!(!store.unregister_hook(id));
    assert!(!store.enable_hook(id));
    store.set("four", &4)?;
    marker.wait(4);
    let mut keys: Vec<_> = c.wait(2).into_iter().map(|s| s.key).collect();
    keys.sort();
    assert_eq!(keys, ["one", "three"]);
    Ok(())
}

pub fn failing_and_panicking_hooks_are_isolated(h: &Harness) -> Result<()> {
    let store = h.store();
    let c = Collector::new();
    store.on(EventKind::Set, |_| panic!("hook panicked on purpose"))?;
    store.on(EventKind::Set, |_| Err("hook failed on purpose".into()))?;
    store.on(EventKind::Set, c.hook())?;
    for i in 0..100 {
        store.set(&format!("k{i}"), &i)?;
    }
    assert_eq!(c.wait(100).len(), 100);
    assert!(eventually(WAIT, || store.stats().hooks_failed == 200));
    assert!(eventually(WAIT, || store.stats().hooks_delivered == 100));
    Ok(())
}

pub fn set_returns_while_a_hook_is_blocked(h: &Harness) -> Result<()> {
    let store = h.build(|b| b.events(EventSettings::default().hook_timeout(secs(60))));
    let gate = Gate::new();
    let g = gate.clone();
    store.on(EventKind::Set, move |_| {
        g.pass();
        Ok(())
    })?;
    store.set("first", &0)?;
    // The hook is now held at the gate, on a hook worker.
    assert!(eventually(WAIT, || gate.waiting() == 1));
    for i in 0..1000 {
        store.set(&format!("k{i}"), &i)?; // every one returns although the hook is blocked
    }
    assert_eq!(store.stats().hooks_delivered, 0);
    gate.open();
    assert!(eventually(WAIT, || store.stats().hooks_delivered == 1001));
    Ok(())
}

pub fn overrunning_hook_times_out_and_others_go_on(h: &Harness) -> Result<()> {
    let store = h.build(|b| b.events(EventSettings::default().workers(1)));
    let c = Collector::new();
    let slow_calls = Arc::new(AtomicUsize::new(0));
    let sc = slow_calls.clone();
    store.hook(
        store
            .new_hook(EventKind::Set, move |e: &Event| {
                if e.key() == "slow" {
                    sc.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_secs(30)); // far past its timeout
                }
                Ok(())
            })
            .timeout(Duration::from_millis(50)),
    )?;
    store.on(EventKind::Set, c.hook())?;
    store.set("slow", &0)?;
    for i in 0..5000 {
        store.set(&format!("k{}", i % 100), &i)?;
    }
    // The other hook got every event, including the one whose first hook got stuck.
    let seen = c.wait(5001);
    assert_eq!(seen[0].key, "slow");
    assert_eq!(slow_calls.load(Ordering::SeqCst), 1);
    assert!(eventually(WAIT, || store.stats().hooks_timed_out == 1));
    Ok(())
}

/// The hooks an event gets are those registered when its delivery began, also when a stuck hook
/// hands the rest of it to a new worker: a hook registered meanwhile does not get it, one
/// unregistered meanwhile still does, and both follow the change from the next event on.
pub fn hook_changes_apply_from_the_next_event_across_a_stuck_hook(h: &Harness) -> Result<()> {
    let store = h.build(|b| b.events(EventSettings::default().workers(1)));
    let gate = Gate::new();
    let g = gate.clone();
    store.hook(
        store
            .new_hook(EventKind::Set, move |e: &Event| {
                if e.key() == "stuck" {
                    g.pass(); // held far past its timeout
                }
                Ok(())
            })
            .timeout(Duration::from_millis(50)),
    )?;
    let (earlier, later) = (Collector::new(), Collector::new());
    let earlier_id = store.on(EventKind::Set, earlier.hook())?;
    store.set("stuck", &0)?;
    assert!(eventually(WAIT, || gate.waiting() == 1));
    store.on(EventKind::Set, later.hook())?;
    assert!(store.unregister_hook(earlier_id));
    assert!(eventually(WAIT, || store.stats().hooks_timed_out == 1));
    store.set("next", &1)?;
    // `later` runs after where `earlier` was: once it has "next", `earlier` has had its chance.
    let later_keys: Vec<String> = later.wait(1).into_iter().map(|s| s.key).collect();
    let earlier_keys: Vec<String> = earlier.wait(1).into_iter().map(|s| s.key).collect();
    assert_eq!(later_keys, ["next"]);
    assert_eq!(earlier_keys, ["stuck"]);
    gate.open();
    Ok(())
}

fn gated_store(h: &Harness, policy: QueueFullPolicy) -> (Store, Arc<Gate>, Arc<Collector>) {
    let store = h.build(|b| {
        b.events(
            EventSettings::default()
                .workers(1)
                .queue_capacity(10)
                .when_full(policy)
                .hook_timeout(secs(60)),
        )
    });
    let gate = Gate::new();
    let c = Collector::new();
    let (g, hook) = (gate.clone(), c.hook());
    store
        .on(EventKind::Set, move |e| {
            g.pass();
            hook(e)
        })
        .unwrap();
    (store, gate, c)
}

pub fn full_queue_drops_newest(h: &Harness) -> Result<()> {
    let (store, gate, c) = gated_store(h, QueueFullPolicy::DropNewest);
    store.set("k", &0)?;
    assert!(eventually(WAIT, || gate.waiting() == 1)); // event 0 is in flight
    for i in 1..50 {
        store.set("k", &i)?;
    }
    assert_eq!(store.stats().events_dropped, 39); // 1..=10 queued, 11..=49 dropped
    gate.open();
    let seen: Vec<_> = c
        .wait(11)
        .iter()
        .map(|s| s.value.clone().unwrap())
        .collect();
    assert_eq!(
        seen,
        (0..=10).map(|i| serde_json::json!(i)).collect::<Vec<_>>()
    );
    Ok(())
}

/// Events no hook accepts (a prefix hook, other keys) are never queued: with the only worker held
/// by a matching event and room for 10 more, 100 writes of other keys drop nothing, and the
/// matching events after them are all delivered.
pub fn events_no_hook_accepts_take_no_room(h: &Harness) -> Result<()> {
    let store = h.build(|b| {
        b.events(
            EventSettings::default()
                .workers(1)
                .queue_capacity(10)
                .when_full(QueueFullPolicy::DropNewest)
                .hook_timeout(secs(60)),
        )
    });
    let gate = Gate::new();
    let c = Collector::new();
    let (g, hook) = (gate.clone(), c.hook());
    store.hook(
        store
            .new_hook(EventKind::Set, move |e| {
                g.pass();
                hook(e)
            })
            .prefix("watched:"),
    )?;
    store.set("watched:0", &0)?;
    assert!(eventually(WAIT, || gate.waiting() == 1)); // the worker is held
    for i in 0..100 {
        store.set(&format!("other:{i}"), &i)?;
    }
    for i in 1..=10 {
        store.set(&format!("watched:{i}"), &i)?;
    }
    assert_eq!(store.stats().events_dropped, 0);
    gate.open();
    let keys: Vec<_> = c.wait(11).into_iter().map(|s| s.key).collect();
    assert_eq!(
        keys,
        (0..=10).map(|i| format!("watched:{i}")).collect::<Vec<_>>()
    );
    Ok(())
}

/// A batch that writes, deletes and rewrites keys leaves exactly the last write's deadline in the
/// expiry bookkeeping: each surviving key expires once, at its last deadline, with its last
/// value, and the deleted one never.
pub fn batch_rewrites_keep_expiry_exact(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    let c = Collector::new();
    store.on(EventKind::Expire, c.hook())?;
    let mut b = store.batch();
    b.set_with("a", &1, secs(5))?
        .delete("a")?
        .set_with("b", &1, secs(5))?
        .set_with("b", &2, secs(9))?
        .delete("never")?
        .set_with("c", &3, secs(5))?
        .delete("c")?
        .set_with("c", &4, secs(7))?;
    store.apply(b)?;
    assert_eq!(store.len()?, 2);
    assert!(!store.contains("a")?);
    assert_eq!(store.ttl("b")?, livedict::KeyTtl::Remaining(secs(9)));
    assert_eq!(store.ttl("c")?, livedict::KeyTtl::Remaining(secs(7)));
    clock.advance(secs(7));
    let seen = c.wait(1);
    assert_eq!(
        (seen[0].key.as_str(), seen[0].value.clone()),
        ("c", Some(serde_json::json!(4)))
    );
    assert!(store.contains("b")?);
    clock.advance(secs(2));
    let seen = c.wait(2);
    assert_eq!(
        (seen[1].key.as_str(), seen[1].value.clone()),
        ("b", Some(serde_json::json!(2)))
    );
    assert_eq!(store.len()?, 0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.now().len(), 2, "no other expiry: {:?}", c.now());
    Ok(())
}

/// A batch over many keys (every bucket of a sharded backend) whose writes differ in kind and
/// expiry reports each key's own outcome and gives each key its own write's expiry: each `Set`
/// event carries that key's previous value, each `Delete` its removed value, each dead entry an
/// `Expire` with its value, and each key ends with the TTL its operation asked for.
pub fn wide_mixed_batch_gives_each_key_its_own_outcome(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    let n = 60;
    for i in 0..n {
        // Every seventh key is written to be dead when the batch runs.
        let ttl = if i % 7 == 0 { secs(1) } else { secs(100) };
        store.set_with(&format!("w{i}"), &(1000 + i), ttl)?;
    }
    let c = Collector::new();
    for kind in [EventKind::Set, EventKind::Delete, EventKind::Expire] {
        store.on(kind, c.hook())?;
    }
    // The dead ones expire once each: by the background sweep or by the batch, whichever
    // reaches them first.
    clock.advance(secs(2));
    let mut b = store.batch();
    for i in 0..n {
        let k = format!("w{i}");
        match i % 4 {
            0 => b.set_with(&k, &i, secs(10))?,
            1 => b.set_with(&k, &i, WriteOptions::ttl(secs(20)).sliding(true))?,
            2 => b.set_with(&k, &i, WriteOptions::keep_ttl())?,
            _ => b.delete(&k)?,
        };
    }
    store.apply(b)?;
    let dead = (0..n).filter(|i| i % 7 == 0).count();
    let deletes = (0..n).filter(|i| i % 4 == 3 && i % 7 != 0).count();
    let seen = c.wait(n - (0..n).filter(|i| i % 4 == 3).count() + deletes + dead);
    for i in 0..n {
        let k = format!("w{i}");
        let old = serde_json::json!(1000 + i);
        let of = |kind| -> Vec<&Seen> {
            seen.iter()
                .filter(|s| s.kind == kind && s.key == k)
                .collect()
        };
        let (sets, deleted, expired) = (
            of(EventKind::Set),
            of(EventKind::Delete),
            of(EventKind::Expire),
        );
        if i % 7 == 0 {
            assert_eq!(expired.len(), 1, "{k}: {seen:?}");
            assert_eq!(expired[0].value, Some(old.clone()), "{k}");
        } else {
            assert!(expired.is_empty(), "{k}: {expired:?}");
        }
        let live_old = (i % 7 != 0).then_some(old);
        if i % 4 == 3 {
            assert!(sets.is_empty(), "{k}: {sets:?}");
            assert_eq!(
                deleted.len(),
                usize::from(live_old.is_some()),
                "{k}: {deleted:?}"
            );
            if let Some(d) = deleted.first() {
                assert_eq!(d.value, live_old, "{k}");
            }
            assert!(!store.contains(&k)?, "{k}");
            continue;
        }
        assert!(deleted.is_empty(), "{k}: {deleted:?}");
        assert_eq!(sets.len(), 1, "{k}: {seen:?}");
        assert_eq!(sets[0].value, Some(serde_json::json!(i)), "{k}");
        assert_eq!(sets[0].previous, live_old, "{k}");
        let ttl = match i % 4 {
            0 => secs(10),
            1 => secs(20),
            // Keeps a live entry's remaining 98 s; a dead entry has none to keep, so the write
            // takes no deadline.
            _ if i % 7 == 0 => {
                assert_eq!(store.ttl(&k)?, livedict::KeyTtl::Never, "{k}");
                continue;
            }
            _ => secs(98),
        };
        assert_eq!(store.ttl(&k)?, livedict::KeyTtl::Remaining(ttl), "{k}");
    }
    Ok(())
}

pub fn full_queue_drops_oldest(h: &Harness) -> Result<()> {
    let (store, gate, c) = gated_store(h, QueueFullPolicy::DropOldest);
    store.set("k", &0)?;
    assert!(eventually(WAIT, || gate.waiting() == 1));
    for i in 1..50 {
        store.set("k", &i)?;
    }
    assert_eq!(store.stats().events_dropped, 39);
    gate.open();
    let seen: Vec<_> = c
        .wait(11)
        .iter()
        .map(|s| s.value.clone().unwrap())
        .collect();
    let expected: Vec<_> = std::iter::once(0)
        .chain(40..50)
        .map(|i| serde_json::json!(i))
        .collect();
    assert_eq!(seen, expected, "the newest events are kept, in order");
    Ok(())
}

pub fn full_queue_blocks_publisher_and_loses_nothing(h: &Harness) -> Result<()> {
    let (store, gate, c) = gated_store(h, QueueFullPolicy::Block);
    store.set("k", &0)?;
    assert!(eventually(WAIT, || gate.waiting() == 1));
    let done = Arc::new(AtomicUsize::new(0));
    let (s, d) = (store.clone(), done.clone());
    let writer = std::thread::spawn(move || -> Result<()> {
        for i in 1..50 {
            s.set("k", &i)?;
            d.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    });
    // Ten calls fill the queue; the eleventh waits for room.
    assert!(eventually(WAIT, || done.load(Ordering::SeqCst) == 10));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        done.load(Ordering::SeqCst),
        10,
        "a publisher went past a full queue"
    );
    gate.open();
    writer.join().unwrap()?;
    assert_eq!(c.wait(50).len(), 50);
    assert_eq!(store.stats().events_dropped, 0);
    Ok(())
}

pub fn entry_hooks_on_access_and_on_expire(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual_with(|b| b.events(EventSettings::default().workers(1)));
    let (access, expire, marker) = (Collector::new(), Collector::new(), Collector::new());
    store.on(EventKind::Set, marker.hook())?;
    let opts = || {
        WriteOptions::ttl(secs(10))
            .on_access(access.hook())
            .on_expire(expire.hook())
    };
    store.set_with("a", &"a1", opts())?;
    store.peek::<String>("a")?; // not an access
    store.get::<String>("a")?;
    store.update("a", |v: Option<String>| v.unwrap() + "+")?; // in place: hooks stay
    store.set_with("deleted", &1, opts())?;
    store.delete("deleted")?; // deleted: its on_expire never fires
    store.set_with("replaced", &1, opts())?;
    store.set_with("replaced", &2, secs(10))?; // overwritten without hooks: detached
    clock.advance(secs(10));
    let e = expire.wait(1);
    assert!(eventually(secs(5), || store.stats().expirations == 2));
    // One lane: once a marker written now has been delivered, every earlier event has been.
    let before = marker.now().len();
    store.set("marker", &0)?;
    marker.wait(before + 1);
    assert_eq!(expire.now().len(), 1);
    assert_eq!(e[0].key, "a");
    assert_eq!(e[0].value, json("a1+"));
    let a = access.now();
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0].value, json("a1"));
    Ok(())
}

pub fn hooks_may_use_the_store(h: &Harness) -> Result<()> {
    let store = h.build(|b| {
        b.events(
            EventSettings::default()
                .workers(1)
                .queue_capacity(2)
                .when_full(QueueFullPolicy::Block),
        )
    });
    let weak = store.downgrade();
    store.hook(store.new_hook(EventKind::Set, move |e: &Event| {
        if let Some(rest) = e.key().strip_prefix("ping")
            && let Some(s) = weak.upgrade()
        {
            s.set(&format!("pong{rest}"), &1)?; // publishes from a hook: never blocks
        }
        Ok(())
    }))?;
    for i in 0..50 {
        store.set(&format!("ping{i}"), &i)?;
    }
    assert!(eventually(WAIT, || store.len().unwrap() == 100));
    // The hook's weak handle does not keep the store alive.
    let weak = store.downgrade();
    drop(store);
    assert!(eventually(WAIT, || weak.upgrade().is_none()));
    Ok(())
}

pub fn clear_update_and_inactive_events(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    let c = Collector::new();
    store.on(EventKind::ALL, c.hook())?;
    store.set("a", &1)?; // Set
    clock.advance(secs(10));
    store.set("b", &2)?; // Set
    assert_eq!(store.cleanup_inactive(secs(5))?, 1); // Delete(a), inactive
    assert_eq!(store.clear()?, 1); // Clear
    let seen = c.wait(4);
    let of = |kind| seen.iter().filter(|s| s.kind == kind).collect::<Vec<_>>();
    assert_eq!(of(EventKind::Set).len(), 2);
    let deleted = of(EventKind::Delete);
    assert_eq!(deleted.len(), 1);
    assert_eq!(
        (deleted[0].key.as_str(), deleted[0].cause),
        ("a", Cause::Inactive)
    );
    let cleared = of(EventKind::Clear);
    assert_eq!(cleared.len(), 1);
    assert_eq!(
        (cleared[0].key.as_str(), cleared[0].cause),
        ("", Cause::Cleared)
    );
    Ok(())
}

pub fn close_delivers_queued_events_and_never_hangs(h: &Harness) -> Result<()> {
    // Queued events are delivered on close.
    let store = h.build(|b| b.events(EventSettings::default().workers(1)));
    let delivered = Arc::new(AtomicUsize::new(0));
    let d = delivered.clone();
    store.on(EventKind::Set, move |_| {
        std::thread::sleep(Duration::from_millis(1));
        d.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })?;
    for i in 0..200 {
        store.set(&format!("k{i}"), &i)?;
    }
    store.close();
    assert_eq!(delivered.load(Ordering::SeqCst), 200);

    // A stuck hook cannot make close hang: it waits the grace period at most.
    let store = h.build(|b| {
        b.events(
            EventSettings::default()
                .shutdown_grace(Duration::from_millis(200))
                .hook_timeout(secs(60)),
        )
    });
    let (tx, rx) = mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    store.on(EventKind::Set, move |_| {
        let _ = rx.lock().recv(); // blocks until the test ends
        Ok(())
    })?;
    for i in 0..10 {
        store.set(&format!("k{i}"), &i)?;
    }
    let started = Instant::now();
    drop(store);
    assert!(
        started.elapsed() < secs(10),
        "closing took {:?}",
        started.elapsed()
    );
    drop(tx);
    Ok(())
}

/// When the grace period of a close runs out, the events not yet delivered (queued, or taken by a
/// worker but not begun) are dropped and counted, and no hook call begins after `close` returns
/// but the one running.
pub fn close_drops_and_counts_what_its_grace_period_did_not_deliver(h: &Harness) -> Result<()> {
    let store = h.build(|b| {
        b.events(
            EventSettings::default()
                .workers(1)
                .shutdown_grace(Duration::from_millis(100)),
        )
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    store.on(EventKind::Set, move |_| {
        std::thread::sleep(Duration::from_millis(5));
        c.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })?;
    let n = 300;
    for i in 0..n {
        store.set(&format!("k{i}"), &i)?;
    }
    let stats = store.clone();
    store.close();
    let at_close = calls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    let after = calls.load(Ordering::SeqCst);
    assert!(
        after <= at_close + 1,
        "{} hook calls ran after close",
        after - at_close
    );
    assert!(after < n, "the grace period was too long for this test");
    let st = stats.stats();
    assert_eq!(st.hooks_delivered + st.events_dropped, n as u64, "{st:?}");
    Ok(())
}

/// Durations too long to add to the clock mean "no limit", never a panic: a hook timeout, a
/// close's grace period, `wait_for` and `lock`.
pub fn unbounded_durations_mean_no_limit(h: &Harness) -> Result<()> {
    let store = h.build(|b| {
        b.events(
            EventSettings::default()
                .hook_timeout(Duration::MAX)
                .shutdown_grace(Duration::MAX),
        )
    });
    let c = Collector::new();
    store.on(EventKind::Set, c.hook())?;
    store.hook(
        store
            .new_hook(EventKind::Set, c.hook())
            .timeout(Duration::MAX),
    )?;
    store.set("k", &1)?;
    assert_eq!(c.wait(2).len(), 2);
    assert_eq!(
        store.wait_for("k", Duration::MAX, |v: &i32| *v == 1)?,
        Some(1)
    );
    let lock = store.lock("k", Duration::MAX)?;
    assert!(lock.is_some());
    drop(lock);
    store.close();
    assert_eq!(store.stats().hooks_delivered, 2);
    Ok(())
}

pub fn slow_expire_hook_never_delays_other_expirations(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual_with(|b| b.events(EventSettings::default().workers(1)));
    let c = Collector::new();
    store.hook(
        store
            .new_hook(EventKind::Expire, |e: &Event| {
                if e.key() == "slow" {
                    std::thread::sleep(Duration::from_secs(30));
                }
                Ok(())
            })
            .timeout(Duration::from_millis(100)),
    )?;
    store.on(EventKind::Expire, c.hook())?;
    store.set_with("slow", &0, secs(1))?;
    for i in 0..500 {
        store.set_with(&format!("k{i}"), &i, secs(2))?;
    }
    clock.advance(secs(1));
    assert!(eventually(WAIT, || store.stats().expirations == 1));
    clock.advance(secs(1));
    // Every other entry is removed and its event delivered while "slow"'s hook still sleeps.
    assert!(eventually(WAIT, || store.stats().expirations == 501));
    assert_eq!(c.wait(501).len(), 501);
    assert_eq!(store.stats().hooks_timed_out, 1);
    Ok(())
}
