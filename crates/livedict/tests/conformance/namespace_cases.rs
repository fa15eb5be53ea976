//! SPEC 5 (access control), 6 (locks) and 7 (namespaces): cases for every backend and front-end.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use livedict::{Error, EventKind, KeyTtl, Keyring, Namespace, Operation, Result, WriteOptions};

use super::{Harness, Store};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn names(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

// ---- SPEC 7: namespaces ---------------------------------------------------------------------

pub fn namespace_handles_have_the_dictionary_api_under_their_prefix(h: &Harness) -> Result<()> {
    let store = h.store();
    let user = Namespace::new("user:{id}")?;
    let u1 = store.namespace(&user, &[("id", "1")])?;
    assert_eq!(u1.prefix(), "user:1:");
    u1.set("name", &"ann")?;
    u1.set_many([("a", 1), ("b", 2)])?;
    assert_eq!(store.get::<String>("user:1:name")?.as_deref(), Some("ann"));
    assert_eq!(u1.get::<String>("name")?.as_deref(), Some("ann"));
    assert_eq!(
        u1.get_many::<i32>(&["a", "b", "zz"])?,
        vec![Some(1), Some(2), None]
    );
    assert!(u1.contains("a")? && !u1.contains("user:1:a")?);
    assert_eq!(u1.incr("visits", 2)?, 2);
    assert_eq!(u1.update("a", |v: Option<i32>| v.unwrap_or(0) + 10)?, 11);
    assert_eq!(u1.setdefault("b", 5)?, 2);
    assert_eq!(u1.replace("b", &3)?, Some(2));
    assert_eq!(u1.len()?, 4);
    assert_eq!(names(u1.keys()?), ["a", "b", "name", "visits"]);
    let mut items: Vec<(String, serde_json::Value)> = u1.items()?;
    items.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(items[0], ("a".to_string(), serde_json::json!(11)));
    assert!(u1.expire("a", secs(60))? && matches!(u1.ttl("a")?, KeyTtl::Remaining(_)));
    assert!(u1.persist("a")?);
    assert_eq!(u1.pop::<i32>("b")?, Some(3));
    assert!(u1.delete("visits")?);
    let mut batch = u1.batch();
    batch.set("c", &"c")?.delete("a")?;
    u1.apply(batch)?;
    assert_eq!(store.get::<String>("user:1:c")?.as_deref(), Some("c"));
    assert!(!store.contains("user:1:a")?);
    let (k, _) = u1.popitem::<serde_json::Value>()?.expect("an entry");
    assert!(
        k == "c" || k == "name",
        "popitem names keys as the handle does: {k}"
    );
    assert!(matches!(u1.set("", &1), Err(Error::InvalidKey { .. })));
    Ok(())
}

pub fn namespace_keys_and_clear_never_reach_a_sibling(h: &Harness) -> Result<()> {
    let store = h.store();
    let user = Namespace::new("user:{id}")?;
    let u1 = store.namespace_one(&user, "1")?;
    let u10 = store.namespace_one(&user, "10")?;
    u1.set("x", &1)?;
    u10.set("x", &10)?;
    store.set("user:1", &"not under user:1:")?;
    store.set("user:1x", &"nor this")?;
    assert_eq!(u1.keys()?, ["x"]);
    assert_eq!(u1.len()?, 1);
    assert_eq!(u1.clear()?, 1);
    assert_eq!(u10.get::<i32>("x")?, Some(10));
    assert_eq!(
        names(store.keys()?),
        ["user:1", "user:10:x", "user:1x"],
        "clear removed only user:1:*"
    );
    assert_eq!(u1.popitem::<i32>()?, None);
    Ok(())
}

pub fn namespace_cleanup_inactive_stays_under_its_prefix(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    let user = Namespace::new("user:{id}")?;
    let u1 = store.namespace_one(&user, "1")?;
    let u10 = store.namespace_one(&user, "10")?;
    u1.set("idle", &1)?;
    u1.set("busy", &1)?;
    u10.set("idle", &1)?;
    store.set("idle", &1)?;
    clock.advance(secs(5));
    u1.get::<i32>("busy")?;
    clock.advance(secs(5));
    assert_eq!(u1.cleanup_inactive(secs(6))?, 1);
    assert_eq!(
        names(store.keys()?),
        ["idle", "user:10:idle", "user:1:busy"],
        "only user:1:'s idle key went"
    );
    assert_eq!(store.cleanup_inactive(secs(6))?, 2);
    Ok(())
}

pub fn namespace_parameter_values_are_escaped_text(h: &Harness) -> Result<()> {
    let store = h.store();
    let user = Namespace::new("user:{id}")?;
    let star = store.namespace_one(&user, "*")?;
    let one = store.namespace_one(&user, "1")?;
    let glob = store.namespace_one(&user, "1?[a]")?;
    let colon = store.namespace_one(&user, "1:x")?;
    one.set("k", &1)?;
    star.set("k", &2)?;
    glob.set("k", &3)?;
    colon.set("k", &4)?;
    assert_eq!(star.keys()?, ["k"], "'*' is text: it matches no other user");
    assert_eq!(star.clear()?, 1);
    assert_eq!(one.get::<i32>("k")?, Some(1));
    assert_eq!(glob.keys()?, ["k"]);
    assert_eq!(colon.prefix(), "user:1%3Ax:");
    assert_eq!(one.keys()?, ["k"], "'1:x' is not a namespace under user 1");
    Ok(())
}

pub fn namespace_binding_errors_name_the_parameter(h: &Harness) -> Result<()> {
    let store = h.store();
    let session = Namespace::new("app")?
        .child("user:{user_id}")?
        .child("session:{sid}")?;
    assert_eq!(session.template(), "app:user:{user_id}:session:{sid}");
    assert_eq!(session.parameters(), ["user_id", "sid"]);
    let err = |r: Result<Store>| match r {
        Err(Error::Namespace(m)) => m,
        other => panic!("expected Error::Namespace, got {other:?}"),
    };
    assert!(err(store.namespace(&session, &[("user_id", "1")])).contains("sid"));
    assert!(
        err(store.namespace(&session, &[("user_id", "1"), ("sid", "s"), ("x", "y")]))
            .contains("\"x\"")
    );
    assert!(err(store.namespace(&session, &[])).contains("user_id"));
    assert!(err(store.namespace_one(&session, "1")).contains("user_id, sid"));
    assert!(matches!(
        Namespace::new("user:{id"),
        Err(Error::Namespace(_))
    ));
    assert!(matches!(
        Namespace::new("a:{x}:{x}"),
        Err(Error::Namespace(_))
    ));
    // A parameter ends its part of the prefix, so that no two bindings give the same one (with
    // `t:{a}{b}`, a=1,b=23 and a=12,b=3 would both be `t:123:`).
    for template in ["t:{a}{b}", "t:{a}-{b}", "{a}x", "t:{a}%"] {
        match Namespace::new(template) {
            Err(Error::Namespace(m)) => assert!(m.contains("\"a\""), "{m}"),
            other => panic!("{template}: expected Error::Namespace, got {other:?}"),
        }
    }
    assert!(Namespace::new("t:{a}:{b}").is_ok() && Namespace::new("x{a}:y").is_ok());
    let s = store.namespace(&session, &[("sid", "s1"), ("user_id", "7")])?;
    s.set("token", &1)?;
    assert!(store.contains("app:user:7:session:s1:token")?);
    assert!(!store.is_empty()?);
    Ok(())
}

/// A hook registered through a namespace handle hears only keys under its prefix (a key or
/// prefix filter is relative to the handle, as its keys are), and the handle can enable, disable
/// or unregister only hooks registered through it or a namespace inside it.
pub fn namespace_hooks_hear_only_their_namespace(h: &Harness) -> Result<()> {
    let store = h.store();
    let user = Namespace::new("user:{id}")?;
    let u1 = store.namespace_one(&user, "1")?;
    let u2 = store.namespace_one(&user, "2")?;
    let heard = Arc::new(Mutex::new(Vec::new()));
    let record = |tag: &'static str| {
        let heard = heard.clone();
        move |e: &livedict::Event| {
            heard.lock().unwrap().push(format!("{tag} {}", e.key()));
            Ok(())
        }
    };
    let all = u1.on(EventKind::Set, record("all"))?;
    u1.hook(u1.new_hook(EventKind::Set, record("key")).key("name"))?;
    u1.hook(u1.new_hook(EventKind::Set, record("prefix")).prefix("n"))?;
    let everything = store.on(EventKind::Set, record("store"))?;
    store.set("other:password", &"hunter2")?;
    store.set("user:10:name", &"x")?;
    u2.set("name", &"y")?;
    u1.set("name", &"ann")?;
    let want = [
        "all user:1:name",
        "key user:1:name",
        "prefix user:1:name",
        "store other:password",
        "store user:10:name",
        "store user:1:name",
        "store user:2:name",
    ];
    let give_up = std::time::Instant::now() + secs(20);
    loop {
        let mut got = heard.lock().unwrap().clone();
        got.sort();
        if got == want {
            break;
        }
        assert!(
            got.len() < want.len() && std::time::Instant::now() < give_up,
            "heard {got:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!u2.disable_hook(all), "not registered through u2");
    assert!(!u2.unregister_hook(all));
    assert!(!u1.disable_hook(everything), "a store-wide hook");
    assert!(!u1.unregister_hook(everything));
    assert!(u1.disable_hook(all) && u1.enable_hook(all) && u1.unregister_hook(all));
    assert!(store.unregister_hook(everything));
    Ok(())
}

pub fn namespace_ttls_inherit_and_keys_override(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual_with(|b| b.default_ttl(secs(1000)));
    let app = Namespace::with_ttl("app", secs(100))?;
    let user = app.child("user:{id}")?;
    let session = user.child_with_ttl("session:{sid}", secs(10))?;
    assert_eq!(user.ttl(), Some(secs(100)));
    let u = store.namespace_one(&user, "1")?;
    let s = store.namespace(&session, &[("id", "1"), ("sid", "a")])?;
    u.set("inherited", &1)?;
    s.set("own", &1)?;
    s.set_with("explicit", &1, secs(500))?;
    store.set("store", &1)?;
    s.incr("counter", 1)?; // a new key by update gets the namespace TTL too
    let remaining = |st: &Store, k: &str| match st.ttl(k).unwrap() {
        KeyTtl::Remaining(d) => d,
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(remaining(&u, "inherited"), secs(100));
    assert_eq!(remaining(&s, "own"), secs(10));
    assert_eq!(remaining(&s, "counter"), secs(10));
    assert_eq!(remaining(&s, "explicit"), secs(500));
    assert_eq!(remaining(&store, "store"), secs(1000));
    clock.advance(secs(10));
    assert_eq!(s.get::<i32>("own")?, None);
    assert_eq!(u.get::<i32>("inherited")?, Some(1));
    clock.advance(secs(90));
    assert_eq!(u.get::<i32>("inherited")?, None);
    assert_eq!(store.get::<i32>("store")?, Some(1));
    Ok(())
}

pub fn namespace_describe_lists_the_schema(h: &Harness) -> Result<()> {
    let _ = h;
    let app = Namespace::new("app")?;
    let user = app.child_with_ttl("user:{user_id}", secs(60))?;
    let _session = user.child("session:{sid}")?;
    let _name = user.key::<String>("name").default("anon".into());
    let _token = user.key::<String>("token").ttl(secs(5)).secret();
    let d = app.describe();
    assert_eq!(d.template, "app");
    assert_eq!(d.children.len(), 1);
    let u = &d.children[0];
    assert_eq!(u.template, "app:user:{user_id}");
    assert_eq!(u.parameters, ["user_id"]);
    assert_eq!((u.ttl, u.effective_ttl), (Some(secs(60)), Some(secs(60))));
    assert_eq!(u.keys.len(), 2);
    assert!(
        u.keys
            .iter()
            .any(|k| k.name == "token" && k.ttl == Some(secs(5)))
    );
    assert_eq!(u.children[0].template, "app:user:{user_id}:session:{sid}");
    assert_eq!(u.children[0].effective_ttl, Some(secs(60)));
    Ok(())
}

pub fn typed_keys_carry_type_default_ttl_and_secrecy(h: &Harness) -> Result<()> {
    let store = h.build(|b| {
        if h.encrypted() {
            b
        } else {
            b.keyring(Keyring::from_bytes(9, &[7; 32]).unwrap())
                .encrypt_all(false)
        }
    });
    let user = Namespace::new("user:{id}")?;
    let name = user.key::<String>("name").default("anon".into());
    let token = user.key::<String>("token").ttl(secs(30)).secret();
    let password = user.key::<String>("password").password();
    let u = store.namespace_one(&user, "1")?;
    assert_eq!(u.get_key(&name)?.as_deref(), Some("anon"));
    u.set_key(&name, &"ann".to_string())?;
    assert_eq!(u.get_key(&name)?.as_deref(), Some("ann"));
    u.set_key(&token, &"t0k3n".to_string())?;
    assert_eq!(u.get_key(&token)?.as_deref(), Some("t0k3n"));
    assert!(matches!(u.ttl("token")?, KeyTtl::Remaining(d) if d <= secs(30)));
    let raw = store.export_string()?;
    assert!(!raw.contains("t0k3n"), "a secret key is stored encrypted");
    u.set_key(&password, &"hunter2".to_string())?;
    assert_eq!(u.verify_password("password", "hunter2")?, Some(true));
    assert!(matches!(u.get_key(&password), Err(Error::AccessDenied(_))));
    assert!(!store.export_string()?.contains("hunter2"));
    Ok(())
}

// ---- SPEC 5: access control -------------------------------------------------------------------

pub fn access_policy_is_asked_before_every_operation(h: &Harness) -> Result<()> {
    let asked: Arc<Mutex<Vec<(Operation, String)>>> = Arc::default();
    let log = asked.clone();
    let store = h.build(move |b| {
        b.access_policy(move |op, key| {
            log.lock().unwrap().push((op, key.to_owned()));
            !(key.starts_with("secret") || op == Operation::Clear && key.is_empty())
        })
    });
    store.set("open", &1)?;
    store.set("open2", &2)?;
    let denied = |r: Result<()>| matches!(r, Err(Error::PermissionDenied { .. }));
    assert!(denied(store.set("secret", &1)));
    assert!(denied(store.get::<i32>("secret").map(drop)));
    assert!(denied(store.delete("secret").map(drop)));
    assert!(denied(store.incr("secret", 1).map(drop)));
    assert!(denied(store.expire("secret", secs(1)).map(drop)));
    assert!(denied(store.contains("secret").map(drop)));
    assert!(denied(store.get_many::<i32>(&["open", "secret"]).map(drop)));
    assert!(denied(store.set_many([("open3", 3), ("secret2", 4)])));
    assert!(denied(store.clear().map(drop)));
    assert!(denied(store.lock("secret", Duration::ZERO).map(drop)));
    assert!(denied(
        store
            .get_or_compute("secret", || Ok::<_, Error>(1))
            .map(drop)
    ));
    let ns = Namespace::new("secret:{id}")?;
    assert!(matches!(
        store.namespace_one(&ns, "1"),
        Err(Error::PermissionDenied { .. })
    ));
    // A hook listening to refused keys is refused too (it would hear their values).
    let hook = |filter: &str| {
        store
            .hook(
                store
                    .new_hook(EventKind::Set, |_| Ok(()))
                    .prefix(filter.to_owned()),
            )
            .map(drop)
    };
    assert!(denied(hook("secret")));
    hook("open")?;
    // Refusals changed nothing.
    assert_eq!(names(store.keys()?), ["open", "open2"]);
    assert_eq!(store.get::<i32>("open")?, Some(1));
    let asked = asked.lock().unwrap();
    for op in [
        Operation::Write,
        Operation::Read,
        Operation::Delete,
        Operation::Update,
        Operation::Expire,
        Operation::Inspect,
        Operation::Scan,
        Operation::Clear,
        Operation::Lock,
        Operation::Namespace,
    ] {
        assert!(asked.iter().any(|(o, _)| *o == op), "{op} was never asked");
    }
    Ok(())
}

pub fn access_policy_sees_full_keys_of_namespace_handles(h: &Harness) -> Result<()> {
    let store = h.build(|b| b.access_policy(|_, key| !key.starts_with("tenant:2:")));
    let tenant = Namespace::new("tenant:{id}")?;
    let t1 = store.namespace_one(&tenant, "1")?;
    t1.set("k", &1)?;
    assert!(matches!(
        store.namespace_one(&tenant, "2"),
        Err(Error::PermissionDenied { .. })
    ));
    assert_eq!(t1.clear()?, 1);
    Ok(())
}

pub fn admin_operations_ask_the_policy(h: &Harness) -> Result<()> {
    let store = h.build(|b| {
        let b = if h.encrypted() {
            b
        } else {
            b.keyring(Keyring::from_bytes(1, &[3; 32]).unwrap())
        };
        b.access_policy(|op, _| op != Operation::Admin)
    });
    store.set("a", &1)?;
    assert!(matches!(
        store.rotate_key(Keyring::from_bytes(99, &[4; 32])?),
        Err(Error::PermissionDenied { .. })
    ));
    assert!(matches!(
        store.rekey(|_, _| {}),
        Err(Error::PermissionDenied { .. })
    ));
    assert!(matches!(
        store.retire_key(1),
        Err(Error::PermissionDenied { .. })
    ));
    assert_eq!(store.get::<i32>("a")?, Some(1));
    Ok(())
}

// ---- SPEC 6: locks ----------------------------------------------------------------------------

pub fn lock_excludes_others_until_released(h: &Harness) -> Result<()> {
    let store = h.store();
    let g = store.lock("job", secs(5))?.expect("a free lock");
    assert!(store.lock("job", Duration::ZERO)?.is_none());
    assert!(
        store.lock("job", Duration::from_millis(30))?.is_none(),
        "times out"
    );
    assert!(
        store.lock("other", Duration::ZERO)?.is_some(),
        "locks are per key"
    );
    let first = g.fence();
    assert!(g.release()?);
    let g2 = store.lock("job", Duration::ZERO)?.expect("released");
    assert!(g2.fence() > first, "the fencing token grows");
    drop(g2); // the async guard releases from a task: wait for it
    let g3 = store.lock("job", secs(5))?.expect("released on drop");
    assert!(g3.fence() > first);
    Ok(())
}

pub fn lock_lease_expires_and_only_the_owner_releases(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    let old = store
        .lock_with("res", Duration::ZERO, secs(10))?
        .expect("free");
    clock.advance(secs(11)); // the holder stalled past its lease
    let new = store
        .lock("res", Duration::ZERO)?
        .expect("the lease ran out");
    assert!(new.fence() > old.fence());
    assert!(!old.release()?, "an expired owner releases nothing");
    assert!(
        store.lock("res", Duration::ZERO)?.is_none(),
        "the new owner still holds it"
    );
    drop(new);
    assert!(store.lock("res", secs(5))?.is_some());
    Ok(())
}

pub fn lock_protected_read_modify_write_loses_nothing(h: &Harness) -> Result<()> {
    let store = h.store();
    let threads = 8;
    let rounds = 50;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || -> Result<Vec<u64>> {
                barrier.wait();
                let mut fences = Vec::new();
                for _ in 0..rounds {
                    let g = store.lock("counter", secs(60))?.expect("within a minute");
                    let n: u64 = store.get("n")?.unwrap_or(0);
                    store.set("n", &(n + 1))?;
                    fences.push(g.fence());
                    g.release()?;
                }
                Ok(fences)
            })
        })
        .collect();
    let mut fences = BTreeSet::new();
    for t in handles {
        for f in t.join().unwrap()? {
            assert!(fences.insert(f), "fencing token {f} given twice");
        }
    }
    assert_eq!(store.get::<u64>("n")?, Some((threads * rounds) as u64));
    Ok(())
}

pub fn get_or_compute_loads_once_per_key(h: &Harness) -> Result<()> {
    let store = h.store();
    let loads = Arc::new(AtomicUsize::new(0));
    let threads = 16;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (store, loads, barrier) = (store.clone(), loads.clone(), barrier.clone());
            std::thread::spawn(move || -> Result<String> {
                barrier.wait();
                store.get_or_compute(&format!("page{}", i % 2), || {
                    loads.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    Ok::<_, Error>(format!("rendered {}", i % 2))
                })
            })
        })
        .collect();
    for (i, t) in handles.into_iter().enumerate() {
        assert_eq!(t.join().unwrap()?, format!("rendered {}", i % 2));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 2, "one load per key");
    // A failing loader stores nothing and frees the key for the next caller.
    let r = store.get_or_compute("flaky", || Err::<u32, _>(std::io::Error::other("down")));
    assert!(matches!(r, Err(Error::Aborted(_))));
    assert!(!store.contains("flaky")?);
    assert_eq!(store.get_or_compute("flaky", || Ok::<u32, Error>(7))?, 7);
    assert_eq!(store.get::<u32>("flaky")?, Some(7));
    Ok(())
}

pub fn locks_and_namespaces_work_together(h: &Harness) -> Result<()> {
    let store = h.store();
    let events = Arc::new(AtomicUsize::new(0));
    let seen = events.clone();
    store.on(EventKind::Set, move |e| {
        assert!(e.key().starts_with("user:1:"), "events carry full keys");
        seen.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })?;
    let user = Namespace::new("user:{id}")?;
    let u = store.namespace_one(&user, "1")?;
    let g = u.lock("profile", secs(1))?.expect("free");
    assert!(
        store.lock("user:1:profile", Duration::ZERO)?.is_none(),
        "the same lock"
    );
    drop(g);
    let v: i32 =
        u.get_or_compute_with("cached", WriteOptions::ttl(secs(60)), || Ok::<_, Error>(5))?;
    assert_eq!(v, 5);
    assert!(store.contains("user:1:cached")?);
    assert!(super::eventually(secs(5), || events.load(Ordering::SeqCst) == 1));
    Ok(())
}
