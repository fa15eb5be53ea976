//! The cases of the conformance suite. Each takes a [`Harness`] for the backend under test.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use livedict::backend::{Condition, Expiry, ReadMode, WriteExpiry};
use livedict::{Bytes, Codec, Error, KeyTtl, Result, Ttl, WriteOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Harness, Store, eventually};

pub use super::crypto_cases::*;
pub use super::event_cases::*;
pub use super::namespace_cases::*;

const SEC: Duration = Duration::from_secs(1);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct User {
    name: String,
    age: u32,
    tags: Vec<String>,
    manager: Option<Box<User>>,
}

fn ann() -> User {
    User {
        name: "ann".into(),
        age: 41,
        tags: vec!["admin".into(), "ops".into()],
        manager: Some(Box::new(User {
            name: "bo".into(),
            age: 50,
            tags: vec![],
            manager: None,
        })),
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

// ---- SPEC 1: keys and values -------------------------------------------------------------------

pub fn invalid_keys_are_refused_and_change_nothing(h: &Harness) -> Result<()> {
    let store = h.store();
    store.set("keep", &1)?;
    let long = "k".repeat(livedict::MAX_KEY_LEN + 1);
    for bad in ["", long.as_str(), "nul\0inside"] {
        let invalid = |r: Result<()>| matches!(r, Err(Error::InvalidKey { .. }));
        assert!(invalid(store.set(bad, &1)), "set {bad:?}");
        assert!(invalid(store.set_bytes(bad, b"x")));
        assert!(invalid(store.get::<i32>(bad).map(drop)));
        assert!(invalid(store.peek::<i32>(bad).map(drop)));
        assert!(invalid(store.contains(bad).map(drop)));
        assert!(invalid(store.delete(bad).map(drop)));
        assert!(invalid(store.incr(bad, 1).map(drop)));
        assert!(invalid(
            store.update(bad, |v: Option<i32>| v.unwrap_or(0)).map(drop)
        ));
        assert!(invalid(store.merge(bad, &json!({"a": 1}))));
        assert!(invalid(store.expire(bad, SEC).map(drop)));
        assert!(invalid(store.persist(bad).map(drop)));
        assert!(invalid(store.ttl(bad).map(drop)));
        assert!(invalid(store.setdefault(bad, 1).map(drop)));
        assert!(invalid(store.get_many::<i32>(&["keep", bad]).map(drop)));
        assert!(invalid(store.set_many([("ok", 1), (bad, 2)])));
        assert!(invalid(store.batch().set(bad, &1).map(drop)));
    }
    assert_eq!(store.keys()?, vec!["keep".to_string()]);
    assert_eq!(store.stats().sets, 1);
    Ok(())
}

pub fn longest_key_and_unicode_keys_work(h: &Harness) -> Result<()> {
    let store = h.store();
    let longest = "é".repeat(livedict::MAX_KEY_LEN / 2);
    assert_eq!(longest.len(), livedict::MAX_KEY_LEN);
    for key in [
        longest.as_str(),
        "ключ:🔑",
        "a b\tc\n",
        "*",
        "user:{id}",
        "%",
        "'; DROP TABLE x; --",
    ] {
        store.set(key, &key)?;
        assert_eq!(store.get::<String>(key)?.as_deref(), Some(key));
    }
    assert_eq!(store.len()?, 7);
    Ok(())
}

pub fn typed_values_round_trip(h: &Harness) -> Result<()> {
    let store = h.store();
    store.set("user", &ann())?;
    store.set("str", "text")?;
    store.set("int", &-7i64)?;
    store.set("big", &u64::MAX)?;
    store.set("float", &1.5f64)?;
    store.set("bool", &true)?;
    store.set("vec", &vec![1, 2, 3])?;
    let map: BTreeMap<String, u8> = [("a".into(), 1), ("b".into(), 2)].into();
    store.set("map", &map)?;
    store.set("empty", "")?;
    assert_eq!(store.get::<User>("user")?, Some(ann()));
    assert_eq!(store.get::<String>("str")?.as_deref(), Some("text"));
    assert_eq!(store.get::<i64>("int")?, Some(-7));
    assert_eq!(store.get::<u64>("big")?, Some(u64::MAX));
    assert_eq!(store.get::<f64>("float")?, Some(1.5));
    assert_eq!(store.get::<bool>("bool")?, Some(true));
    assert_eq!(store.get::<Vec<i32>>("vec")?, Some(vec![1, 2, 3]));
    assert_eq!(store.get::<BTreeMap<String, u8>>("map")?, Some(map));
    assert_eq!(store.get::<String>("empty")?.as_deref(), Some(""));
    Ok(())
}

pub fn null_is_a_value(h: &Harness) -> Result<()> {
    let store = h.store();
    store.set("n", &None::<i32>)?;
    assert!(store.contains("n")?);
    assert_eq!(store.len()?, 1);
    assert_eq!(store.get::<Option<i32>>("n")?, Some(None));
    assert_eq!(store.get::<Option<i32>>("missing")?, None);
    assert_eq!(
        store.get::<serde_json::Value>("n")?,
        Some(serde_json::Value::Null)
    );
    assert!(store.delete("n")?);
    Ok(())
}

pub fn raw_bytes_round_trip_and_do_not_mix_with_typed(h: &Harness) -> Result<()> {
    let store = h.store();
    let all: Vec<u8> = (0..=255).collect();
    store.set_bytes("raw", &all)?;
    store.set_bytes("empty", b"")?;
    assert_eq!(store.get_bytes("raw")?.as_deref(), Some(&all[..]));
    assert_eq!(store.get_bytes("empty")?.as_deref(), Some(&b""[..]));
    assert!(matches!(
        store.get::<Vec<u8>>("raw"),
        Err(Error::Decode { .. })
    ));
    store.set("typed", &vec![1u8, 2])?;
    assert!(matches!(
        store.get_bytes("typed"),
        Err(Error::Decode { .. })
    ));
    // Both still there, unchanged.
    assert_eq!(store.get_bytes("raw")?.as_deref(), Some(&all[..]));
    assert_eq!(store.get::<Vec<u8>>("typed")?, Some(vec![1, 2]));
    Ok(())
}

pub fn wrong_type_read_is_decode_error_and_keeps_value(h: &Harness) -> Result<()> {
    let store = h.store();
    store.set("user", &ann())?;
    assert!(matches!(
        store.get::<u64>("user"),
        Err(Error::Decode { .. })
    ));
    assert!(matches!(
        store.get::<Vec<String>>("user"),
        Err(Error::Decode { .. })
    ));
    assert!(matches!(
        store.pop::<u64>("user"),
        Err(Error::Decode { .. })
    ));
    // pop removes even when the value cannot be decoded as asked (it was removed atomically).
    assert!(!store.contains("user")?);
    store.set("s", "text")?;
    assert!(matches!(store.get::<i32>("s"), Err(Error::Decode { .. })));
    assert_eq!(store.get::<String>("s")?.as_deref(), Some("text"));
    Ok(())
}

pub fn oversized_values_are_refused_and_change_nothing(h: &Harness) -> Result<()> {
    let store = h.build(|b| b.max_value_size(100));
    store.set_bytes("k", &[1; 100])?; // exactly the limit
    let too_big = |r: Result<()>| {
        matches!(
            r,
            Err(Error::ValueTooLarge {
                size: 101,
                max: 100
            })
        )
    };
    assert!(too_big(store.set_bytes("k", &[2; 101])));
    assert!(too_big(store.set_bytes("new", &[2; 101])));
    assert!(matches!(
        store.set("k", &"x".repeat(200)),
        Err(Error::ValueTooLarge { max: 100, .. })
    ));
    assert!(matches!(
        store.batch().set_bytes_with("k", &[0; 101], Ttl::Default),
        Err(Error::ValueTooLarge { .. })
    ));
    assert_eq!(store.get_bytes("k")?.as_deref(), Some(&[1u8; 100][..]));
    assert!(!store.contains("new")?);
    // An update producing an oversized value changes nothing either.
    store.set("list", &Vec::<u8>::new())?;
    let r = store.update("list", |_: Option<Vec<u8>>| vec![7u8; 200]);
    assert!(matches!(r, Err(Error::ValueTooLarge { .. })));
    assert_eq!(store.get::<Vec<u8>>("list")?, Some(vec![]));
    // The default limit is 16 MiB.
    let default = h.store();
    assert!(matches!(
        default.set_bytes("k", &vec![0; livedict::DEFAULT_MAX_VALUE_SIZE + 1]),
        Err(Error::ValueTooLarge { .. })
    ));
    default.set_bytes("k", &vec![0; livedict::DEFAULT_MAX_VALUE_SIZE])?;
    Ok(())
}

pub fn corrupted_or_foreign_bytes_are_format_errors(h: &Harness) -> Result<()> {
    let backend = h.backend();
    let store = h.open(backend.clone(), |b| b)?;
    let never = WriteExpiry::replace(Expiry::Never);
    let now = livedict::Clock::System.now();
    type Expected = fn(&Error) -> bool;
    let format: Expected = |r| matches!(r, Error::Format(_));
    let crypto: Expected = |r| matches!(r, Error::Crypto(_));
    let samples: [(&[u8], Expected); 7] = [
        (b"", format),
        (&[0xD7, 1, 0x80, b'1'], format), // reserved bits set on raw bytes
        (b"{\"plain\": \"json\"}", format),
        (&[0xD7], format),
        (&[0xD7, 9, 1, b'1'], format),    // written by a newer format
        (&[0xD7, 1, 0x0E, b'1'], format), // unknown payload kind
        (&[0xD7, 1, 0x11, 1, 2], crypto), // encrypted, and this store has no keyring
    ];
    for (i, (bytes, expected)) in samples.iter().enumerate() {
        let key = format!("bad{i}");
        backend.set(
            &key,
            Bytes::copy_from_slice(bytes),
            never,
            Condition::Always,
            now,
        )?;
        let e = store.get::<serde_json::Value>(&key).unwrap_err();
        assert!(expected(&e), "sample {i}: unexpected {e:?}");
        assert!(expected(&store.get_bytes(&key).unwrap_err()));
        assert!(expected(&store.incr(&key, 1).unwrap_err()));
        // Nothing changed: the bytes are still there, as they were.
        assert_eq!(
            backend
                .get(&key, &livedict::Now::fixed(now), ReadMode::Peek)?
                .as_deref(),
            Some(*bytes)
        );
    }
    // A valid header with a corrupted JSON payload is a decode error.
    backend.set(
        "badjson",
        Bytes::from_static(&[0xD7, 1, 1, b'{']),
        never,
        Condition::Always,
        now,
    )?;
    assert!(matches!(
        store.get::<serde_json::Value>("badjson"),
        Err(Error::Decode { .. })
    ));
    Ok(())
}

pub fn codecs_read_each_others_values(h: &Harness) -> Result<()> {
    let backend = h.backend();
    let json = h.open(backend.clone(), |b| b.codec(Codec::Json))?;
    json.set("from-json", &ann())?;
    #[cfg(feature = "msgpack")]
    {
        let mp = h.open(backend.clone(), |b| b.codec(Codec::MessagePack))?;
        mp.set("from-mp", &ann())?;
        assert_eq!(mp.get::<User>("from-json")?, Some(ann()));
        assert_eq!(json.get::<User>("from-mp")?, Some(ann()));
        // merge works on MessagePack maps too, and keeps them readable by both.
        mp.set("m", &json!({"a": 1}))?;
        json.merge("m", &json!({"b": 2}))?;
        assert_eq!(
            mp.get::<serde_json::Value>("m")?,
            Some(json!({"a": 1, "b": 2}))
        );
        assert_eq!(mp.incr("n", 2)?, 2);
        assert_eq!(json.incr("n", 2)?, 4);
    }
    assert_eq!(json.get::<User>("from-json")?, Some(ann()));
    Ok(())
}

// ---- SPEC 2: the dictionary --------------------------------------------------------------------

pub fn get_forms_on_missing_keys(h: &Harness) -> Result<()> {
    let store = h.store();
    assert_eq!(store.get::<i32>("nope")?, None);
    assert_eq!(store.peek::<i32>("nope")?, None);
    assert_eq!(store.get_bytes("nope")?, None);
    assert_eq!(store.get_or("nope", 7)?, 7);
    match store.require::<i32>("nope") {
        Err(Error::KeyNotFound { key }) => assert_eq!(key, "nope"),
        other => panic!("expected KeyNotFound, got {other:?}"),
    }
    store.set("yes", &3)?;
    assert_eq!(store.require::<i32>("yes")?, 3);
    assert_eq!(store.get_or("yes", 7)?, 3);
    Ok(())
}

pub fn set_overwrites_and_delete_reports_existence(h: &Harness) -> Result<()> {
    let store = h.store();
    store.set("k", &1)?;
    store.set("k", "now a string")?;
    assert_eq!(store.get::<String>("k")?.as_deref(), Some("now a string"));
    assert!(store.delete("k")?);
    assert!(!store.delete("k")?);
    assert_eq!(store.get::<String>("k")?, None);
    assert!(!store.delete("never-existed")?);
    Ok(())
}

pub fn contains_len_keys_values_items_iter(h: &Harness) -> Result<()> {
    let store = h.store();
    assert!(store.is_empty()?);
    assert_eq!(store.len()?, 0);
    assert!(store.keys()?.is_empty());
    for i in 0..50 {
        store.set(&format!("k{i:02}"), &i)?;
    }
    assert!(!store.is_empty()?);
    assert_eq!(store.len()?, 50);
    assert!(store.contains("k07")?);
    assert!(!store.contains("k50")?);
    let keys = sorted(store.keys()?);
    assert_eq!(
        keys,
        (0..50).map(|i| format!("k{i:02}")).collect::<Vec<_>>()
    );
    let mut values: Vec<i32> = store.values()?;
    values.sort();
    assert_eq!(values, (0..50).collect::<Vec<_>>());
    let mut items: Vec<(String, i32)> = store.items()?;
    items.sort();
    assert_eq!(items[7], ("k07".to_string(), 7));
    let total: i32 = store
        .iter::<i32>()?
        .map(|r| r.map(|(_, v)| v))
        .sum::<Result<i32>>()?;
    assert_eq!(total, (0..50).sum::<i32>());
    // One value of another type: items fails, iter yields one Err and the rest.
    store.set("odd", "text")?;
    assert!(matches!(store.items::<i32>(), Err(Error::Decode { .. })));
    let results: Vec<_> = store.iter::<i32>()?.collect();
    assert_eq!(results.len(), 51);
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    Ok(())
}

pub fn set_many_and_get_many(h: &Harness) -> Result<()> {
    let store = h.store();
    store.set_many(
        (0..100)
            .map(|i| (format!("k{i}"), i))
            .collect::<Vec<_>>()
            .iter()
            .map(|(k, v)| (k.as_str(), *v)),
    )?;
    assert_eq!(store.len()?, 100);
    let got: Vec<Option<i32>> = store.get_many(&["k1", "missing", "k99"])?;
    assert_eq!(got, vec![Some(1), None, Some(99)]);
    assert!(store.get_many::<i32>(&[])?.is_empty());
    let s = store.stats();
    assert_eq!((s.hits, s.misses, s.sets), (2, 1, 100));
    Ok(())
}

pub fn set_many_with_a_bad_pair_writes_nothing(h: &Harness) -> Result<()> {
    let store = h.build(|b| b.max_value_size(10));
    let r = store.set_many([("a", "ok"), ("b", "this one is far too long"), ("c", "ok")]);
    assert!(matches!(r, Err(Error::ValueTooLarge { .. })));
    assert!(store.is_empty()?);
    let r = store.set_many([("a", "ok"), ("", "x")]);
    assert!(matches!(r, Err(Error::InvalidKey { .. })));
    assert!(store.is_empty()?);
    Ok(())
}

pub fn setdefault_gets_or_inserts(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    assert_eq!(store.setdefault("k", "first".to_string())?, "first");
    assert_eq!(store.setdefault("k", "second".to_string())?, "first");
    assert_eq!(store.get::<String>("k")?.as_deref(), Some("first"));
    // An expired value counts as absent.
    store.set_with("e", &1, secs(1))?;
    clock.advance(secs(1));
    assert_eq!(store.setdefault("e", 2)?, 2);
    Ok(())
}

pub fn pop_popitem_and_clear(h: &Harness) -> Result<()> {
    let store = h.store();
    store.set("a", &1)?;
    assert_eq!(store.pop::<i32>("a")?, Some(1));
    assert_eq!(store.pop::<i32>("a")?, None);
    for i in 0..10 {
        store.set(&format!("k{i}"), &i)?;
    }
    let mut seen = HashSet::new();
    while let Some((k, v)) = store.popitem::<i32>()? {
        assert_eq!(k, format!("k{v}"));
        assert!(seen.insert(v), "popped twice");
    }
    assert_eq!(seen.len(), 10);
    assert!(store.is_empty()?);
    for i in 0..5 {
        store.set(&format!("k{i}"), &i)?;
    }
    assert_eq!(store.clear()?, 5);
    assert_eq!(store.clear()?, 0);
    assert!(store.is_empty()?);
    store.set("after", &1)?;
    assert_eq!(store.len()?, 1);
    Ok(())
}

pub fn merge_updates_fields_of_a_map(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    store.set_with("u", &json!({"name": "ann", "age": 30}), secs(10))?;
    store.merge("u", &json!({"age": 31, "city": "Oslo"}))?;
    assert_eq!(
        store.get::<serde_json::Value>("u")?,
        Some(json!({"name": "ann", "age": 31, "city": "Oslo"}))
    );
    // A struct is map-shaped too.
    #[derive(Serialize)]
    struct Patch {
        age: u32,
    }
    store.merge("u", &Patch { age: 32 })?;
    assert_eq!(store.get::<serde_json::Value>("u")?.unwrap()["age"], 32);
    // The TTL is kept.
    clock.advance(secs(10));
    assert!(!store.contains("u")?);
    // A missing key starts as an empty map.
    store.merge("new", &json!({"a": 1}))?;
    assert_eq!(
        store.get::<serde_json::Value>("new")?,
        Some(json!({"a": 1}))
    );
    // Not a map: an error, nothing changed.
    store.set("n", &5)?;
    assert!(matches!(
        store.merge("n", &json!({"a": 1})),
        Err(Error::Decode { .. })
    ));
    assert_eq!(store.get::<i32>("n")?, Some(5));
    assert!(matches!(store.merge("new", &[1, 2]), Err(Error::Encode(_))));
    assert_eq!(
        store.get::<serde_json::Value>("new")?,
        Some(json!({"a": 1}))
    );
    Ok(())
}

pub fn replace_returns_previous_value(h: &Harness) -> Result<()> {
    let store = h.store();
    assert_eq!(store.replace("k", &1)?, None);
    assert_eq!(store.replace("k", &2)?, Some(1));
    assert_eq!(store.get::<i32>("k")?, Some(2));
    Ok(())
}

pub fn update_runs_closure_once_and_returns_new_value(h: &Harness) -> Result<()> {
    let store = h.store();
    let mut calls = 0;
    let v = store.update("list", |old: Option<Vec<i32>>| {
        calls += 1;
        assert!(old.is_none());
        vec![1]
    })?;
    assert_eq!((v, calls), (vec![1], 1));
    let v = store.update("list", |old: Option<Vec<i32>>| {
        calls += 1;
        let mut v = old.unwrap();
        v.push(2);
        v
    })?;
    assert_eq!((v, calls), (vec![1, 2], 2));
    assert_eq!(store.get::<Vec<i32>>("list")?, Some(vec![1, 2]));
    // Wrong stored type: a decode error before the closure runs.
    store.set("s", "text")?;
    let r = store.update("s", |_: Option<i32>| {
        calls += 1;
        0
    });
    assert!(matches!(r, Err(Error::Decode { .. })));
    assert_eq!(calls, 2);
    Ok(())
}

pub fn try_update_error_or_none(h: &Harness) -> Result<()> {
    let store = h.store();
    store.set("k", &1)?;
    let r = store.try_update("k", |_: Option<i32>| Err::<Option<i32>, _>("nope"));
    match r {
        Err(Error::Aborted(e)) => assert_eq!(e.to_string(), "nope"),
        other => panic!("expected Aborted, got {other:?}"),
    }
    assert_eq!(store.get::<i32>("k")?, Some(1));
    assert_eq!(store.stats().sets, 1);
    // None deletes.
    let r = store.try_update("k", |_: Option<i32>| Ok::<_, Error>(None))?;
    assert_eq!(r, None);
    assert!(!store.contains("k")?);
    assert_eq!(store.stats().deletes, 1);
    // None on a missing key changes nothing.
    store.try_update("k", |_: Option<i32>| Ok::<_, Error>(None))?;
    assert!(!store.contains("k")?);
    // A panicking closure changes nothing and leaves the store usable.
    store.set("p", &1)?;
    let s2 = store.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = s2.update("p", |_: Option<i32>| -> i32 { panic!("closure panicked") });
    }));
    assert!(r.is_err());
    assert_eq!(store.get::<i32>("p")?, Some(1));
    assert_eq!(store.incr("p", 1)?, 2);
    Ok(())
}

pub fn reentrant_use_inside_update_is_an_error(h: &Harness) -> Result<()> {
    let store = h.store();
    store.set("other", &1)?;
    let mut inner = None;
    let v = store.update("k", |_: Option<i32>| {
        inner = Some(store.get::<i32>("other"));
        5
    })?;
    assert_eq!(v, 5);
    assert!(matches!(inner, Some(Err(Error::Reentrant))));
    // Every kind of call is refused, including writes of the same key.
    let mut results = Vec::new();
    store.update("k", |_: Option<i32>| {
        results.push(store.set("k", &1).err());
        results.push(store.delete("k").err());
        results.push(store.len().err());
        results.push(store.incr("k", 1).err());
        6
    })?;
    assert!(results.iter().all(|e| matches!(e, Some(Error::Reentrant))));
    // A second store on the same backend is refused too: the closure holds the backend.
    let backend = h.backend();
    let first = h.open(backend.clone(), |b| b)?;
    let second = h.open(backend, |b| b)?;
    let mut from_second = None;
    first.update("k", |_: Option<i32>| {
        from_second = Some(second.len());
        1
    })?;
    assert!(matches!(from_second, Some(Err(Error::Reentrant))));
    // A store on another backend may be used from inside.
    let other = h.store();
    store.update("k", |_: Option<i32>| {
        other.set("x", &1).expect("another store is fine");
        7
    })?;
    assert_eq!(store.get::<i32>("k")?, Some(7));
    assert_eq!(other.get::<i32>("x")?, Some(1));
    Ok(())
}

pub fn incr_counts_and_refuses_non_integers_and_overflow(h: &Harness) -> Result<()> {
    let store = h.store();
    assert_eq!(store.incr("n", 5)?, 5);
    assert_eq!(store.incr("n", -7)?, -2);
    assert_eq!(store.get::<i64>("n")?, Some(-2));
    store.set("s", "x")?;
    assert!(matches!(store.incr("s", 1), Err(Error::Decode { .. })));
    store.set("f", &1.5)?;
    assert!(matches!(store.incr("f", 1), Err(Error::Decode { .. })));
    store.set("max", &i64::MAX)?;
    assert!(matches!(store.incr("max", 1), Err(Error::Overflow { .. })));
    assert_eq!(store.get::<i64>("max")?, Some(i64::MAX));
    assert_eq!(store.get::<String>("s")?.as_deref(), Some("x"));
    Ok(())
}

pub fn batch_is_all_or_nothing(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    store.set("gone", &0)?;
    let mut batch = store.batch();
    batch
        .set("a", &1)?
        .set_with("b", &2, secs(5))?
        .set_bytes_with("c", b"raw", Ttl::Never)?
        .delete("gone")?;
    assert!(batch.set_with("d", &4, Duration::ZERO).is_err());
    assert!(batch.set("", &4).is_err());
    assert_eq!(batch.len(), 4);
    assert_eq!(store.len()?, 1, "nothing applied before apply");
    store.apply(batch)?;
    assert_eq!(store.get::<i32>("a")?, Some(1));
    assert_eq!(store.get::<i32>("b")?, Some(2));
    assert_eq!(store.get_bytes("c")?.as_deref(), Some(&b"raw"[..]));
    assert!(!store.contains("gone")?);
    clock.advance(secs(5));
    assert!(!store.contains("b")?);
    store.apply(store.batch())?; // empty batch is fine
    // A batch is applied by the store that built it: another's values are encoded with its
    // codec and keys, which this store may not read.
    let other = h.store();
    let mut foreign = other.batch();
    foreign.set("foreign", &1)?;
    assert!(matches!(store.apply(foreign), Err(Error::Format(_))));
    assert!(!store.contains("foreign")?);
    Ok(())
}

pub fn a_key_written_twice_in_a_batch_expires_at_its_last_deadline(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual_with(|b| b.active_expiry(false));
    store.set_with("old", &0, secs(50))?;
    let mut batch = store.batch();
    batch
        .set_with("old", &1, secs(100))?
        .set_with("old", &2, secs(5))?
        .set_with("new", &3, secs(100))?
        .set_with("new", &4, secs(5))?
        .set_with("later", &5, secs(5))?
        .set_with("later", &6, secs(100))?;
    store.apply(batch)?;
    clock.advance(secs(5) - ms(1));
    assert_eq!(store.get::<i32>("old")?, Some(2));
    assert_eq!(store.get::<i32>("new")?, Some(4));
    assert_eq!(store.sweep_expired()?, 0);
    clock.advance(ms(1));
    assert!(!store.contains("old")? && !store.contains("new")?);
    // The sweep finds both at their last (earlier) deadline, and leaves the one moved later.
    assert_eq!(store.sweep_expired()?, 2);
    assert_eq!(store.get::<i32>("later")?, Some(6));
    clock.advance(secs(95));
    assert_eq!(store.sweep_expired()?, 1);
    assert_eq!(store.len()?, 0);
    Ok(())
}

pub fn batch_is_never_seen_half_applied(h: &Harness) -> Result<()> {
    let store = h.store();
    store.set_many([("x", 0), ("y", 0)])?;
    let writer = store.clone();
    let rounds = 2000;
    let t = std::thread::spawn(move || -> Result<()> {
        for i in 1..=rounds {
            let mut b = writer.batch();
            b.set("x", &i)?.set("y", &i)?;
            writer.apply(b)?;
        }
        Ok(())
    });
    let mut checks = 0;
    loop {
        let v: Vec<Option<i32>> = store.get_many(&["x", "y"])?;
        // get_many is not itself a snapshot on every backend, so compare each read's pair
        // through a second read: x written with i implies y >= i.
        let (x, y) = (v[0].unwrap(), v[1].unwrap());
        assert!(y >= x, "saw x={x} but y={y}");
        checks += 1;
        if x == rounds {
            break;
        }
    }
    t.join().unwrap()?;
    assert!(checks > 0);
    Ok(())
}

pub fn wait_for_returns_at_once_later_or_on_timeout(h: &Harness) -> Result<()> {
    let store = h.store();
    store.set("n", &3)?;
    assert_eq!(store.wait_for("n", secs(5), |v: &i32| *v == 3)?, Some(3));
    assert_eq!(store.wait_for("n", ms(30), |v: &i32| *v == 4)?, None);
    assert_eq!(store.wait_for("missing", ms(30), |_: &i32| true)?, None);
    let writer = store.clone();
    let go = Arc::new(Barrier::new(2));
    let go2 = go.clone();
    let t = std::thread::spawn(move || -> Result<()> {
        go2.wait();
        for i in 4..=10 {
            writer.set("n", &i)?;
        }
        Ok(())
    });
    go.wait();
    assert_eq!(store.wait_for("n", secs(30), |v: &i32| *v == 10)?, Some(10));
    t.join().unwrap()?;
    Ok(())
}

pub fn stats_count_operations(h: &Harness) -> Result<()> {
    let store = h.store();
    store.set("a", &1)?;
    store.set("b", &2)?;
    store.get::<i32>("a")?;
    store.get::<i32>("zz")?;
    store.peek::<i32>("a")?; // not counted
    store.delete("a")?;
    store.delete("a")?; // nothing deleted: not counted
    store.incr("c", 1)?;
    let s = store.stats();
    assert_eq!(
        (s.hits, s.misses, s.sets, s.deletes, s.expirations),
        (1, 1, 3, 1, 0)
    );
    Ok(())
}

pub fn closed_store_refuses_calls(h: &Harness) -> Result<()> {
    let store = h.store();
    store.set("a", &1)?;
    let other_handle = store.clone();
    store.close();
    store.close(); // idempotent
    assert!(matches!(other_handle.get::<i32>("a"), Err(Error::Closed)));
    assert!(matches!(store.set("a", &1), Err(Error::Closed)));
    assert!(matches!(store.len(), Err(Error::Closed)));
    Ok(())
}

// ---- SPEC 3: time to live ----------------------------------------------------------------------

pub fn zero_ttl_is_refused(h: &Harness) -> Result<()> {
    let store = h.store();
    let bad = |r: Result<()>| matches!(r, Err(Error::InvalidTtl { .. }));
    assert!(bad(store.set_with("k", &1, Duration::ZERO)));
    assert!(bad(store.set_with(
        "k",
        &1,
        WriteOptions::ttl(Duration::ZERO).sliding(true)
    )));
    assert!(bad(store.set_bytes_with("k", b"", Duration::ZERO)));
    assert!(bad(store
        .batch()
        .set_with("k", &1, Duration::ZERO)
        .map(drop)));
    assert!(bad(store.cleanup_inactive(Duration::ZERO).map(drop)));
    assert!(bad(store.set_with("k", &1, livedict::MAX_TTL + SEC)));
    assert!(!store.contains("k")?);
    store.set("k", &1)?;
    assert!(bad(store.expire("k", Duration::ZERO).map(drop)));
    assert_eq!(store.ttl("k")?, KeyTtl::Never);
    let built = h.open(h.backend(), |b| b.default_ttl(Duration::ZERO));
    assert!(matches!(built, Err(Error::InvalidTtl { .. })));
    Ok(())
}

pub fn the_longest_ttl_is_kept(h: &Harness) -> Result<()> {
    let store = h.store();
    let max = livedict::MAX_TTL;
    let near_max =
        |ttl: KeyTtl| matches!(ttl, KeyTtl::Remaining(d) if d > max - secs(60) && d <= max);
    store.set_with("k", &1, max)?;
    assert!(near_max(store.ttl("k")?), "{:?}", store.ttl("k")?);
    store.set("k2", &2)?;
    assert!(store.expire("k2", max)?);
    assert!(near_max(store.ttl("k2")?));
    store.set_with("k3", &3, WriteOptions::ttl(max).sliding(true))?;
    assert_eq!(store.get::<i32>("k3")?, Some(3));
    assert!(near_max(store.ttl("k3")?));
    let mut batch = store.batch();
    batch.set_with("k4", &4, max)?;
    store.apply(batch)?;
    assert!(near_max(store.ttl("k4")?));
    assert_eq!(store.len()?, 4);
    Ok(())
}

pub fn entry_is_invisible_from_its_deadline_on_every_read_path(h: &Harness) -> Result<()> {
    // No background expiry: invisibility must not depend on removal.
    let (store, clock) = h.manual_with(|b| b.active_expiry(false));
    store.set_with("t", &1, secs(10))?;
    store.set("forever", &2)?;
    clock.advance(ms(9_999));
    assert!(store.contains("t")?);
    assert_eq!(store.len()?, 2);
    clock.advance(ms(1));
    assert_eq!(store.get::<i32>("t")?, None);
    assert_eq!(store.peek::<i32>("t")?, None);
    assert!(!store.contains("t")?);
    assert_eq!(store.len()?, 1);
    assert_eq!(store.keys()?, vec!["forever".to_string()]);
    assert_eq!(store.items::<i32>()?, vec![("forever".to_string(), 2)]);
    assert_eq!(store.values::<i32>()?, vec![2]);
    assert_eq!(
        store.get_many::<i32>(&["t", "forever"])?,
        vec![None, Some(2)]
    );
    assert_eq!(store.ttl("t")?, KeyTtl::Missing);
    assert!(
        !store.expire("t", secs(100))?,
        "cannot revive an expired entry"
    );
    assert!(!store.persist("t")?);
    assert!(
        !store.delete("t")?,
        "deleting an expired entry deletes nothing"
    );
    assert_eq!(store.update("t", |v: Option<i32>| v.unwrap_or(0) + 10)?, 10);
    assert!(store.popitem::<i32>()?.is_some());
    Ok(())
}

pub fn overwrite_replaces_ttl_unless_kept(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    store.set_with("k", &1, secs(10))?;
    store.set("k", &2)?; // no default TTL: now never expires
    assert_eq!(store.ttl("k")?, KeyTtl::Never);
    store.set_with("k", &3, secs(10))?;
    clock.advance(secs(4));
    store.set_with("k", &4, Ttl::Keep)?;
    assert_eq!(store.ttl("k")?, KeyTtl::Remaining(secs(6)));
    store.set_with("k", &5, secs(100))?;
    assert_eq!(store.ttl("k")?, KeyTtl::Remaining(secs(100)));
    // Keep on a new key: the store's default (none here).
    store.set_with("new", &1, Ttl::Keep)?;
    assert_eq!(store.ttl("new")?, KeyTtl::Never);
    Ok(())
}

pub fn default_ttl_applies_and_never_overrides_it(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual_with(|b| b.default_ttl(secs(60)));
    store.set("d", &1)?;
    store.set_with("n", &1, Ttl::Never)?;
    store.set_with("s", &1, secs(5))?;
    store.set_with("k", &1, Ttl::Keep)?; // new key: the default
    assert_eq!(store.ttl("d")?, KeyTtl::Remaining(secs(60)));
    assert_eq!(store.ttl("k")?, KeyTtl::Remaining(secs(60)));
    assert_eq!(store.ttl("n")?, KeyTtl::Never);
    clock.advance(secs(5));
    assert!(!store.contains("s")?);
    clock.advance(secs(55));
    assert!(!store.contains("d")?);
    assert!(store.contains("n")?);
    // incr / update / merge of a new key use the default too.
    store.incr("c", 1)?;
    assert_eq!(store.ttl("c")?, KeyTtl::Remaining(secs(60)));
    Ok(())
}

pub fn ttl_expire_and_persist(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    assert_eq!(store.ttl("k")?, KeyTtl::Missing);
    store.set("k", &1)?;
    assert_eq!(store.ttl("k")?, KeyTtl::Never);
    assert!(store.expire("k", secs(10))?);
    assert_eq!(store.ttl("k")?, KeyTtl::Remaining(secs(10)));
    clock.advance(secs(3));
    assert_eq!(store.ttl("k")?, KeyTtl::Remaining(secs(7)));
    assert!(store.persist("k")?);
    assert_eq!(store.ttl("k")?, KeyTtl::Never);
    clock.advance(secs(1000));
    assert_eq!(store.get::<i32>("k")?, Some(1));
    assert!(store.expire("k", secs(1))?);
    clock.advance(secs(1));
    assert!(!store.contains("k")?);
    assert!(!store.expire("missing", secs(1))?);
    assert!(!store.persist("missing")?);
    // expire_with can make a key sliding.
    store.set("s", &1)?;
    assert!(store.expire_with("s", WriteOptions::ttl(secs(10)).sliding(true))?);
    clock.advance(secs(8));
    store.get::<i32>("s")?;
    clock.advance(secs(8));
    assert!(store.contains("s")?);
    Ok(())
}

pub fn millisecond_resolution(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    store.set_with("k", &1, ms(1))?;
    store.set_with("sub", &1, Duration::from_micros(10))?; // rounds up to 1 ms
    store.set_with("k250", &1, ms(250))?;
    assert!(store.contains("k")?);
    assert!(store.contains("sub")?);
    clock.advance(ms(1));
    assert!(!store.contains("k")?);
    assert!(!store.contains("sub")?);
    assert_eq!(store.ttl("k250")?, KeyTtl::Remaining(ms(249)));
    clock.advance(ms(249));
    assert!(!store.contains("k250")?);
    Ok(())
}

pub fn sliding_ttl_renews_on_get_and_write_not_on_peek(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    store.set_with("s", &1, WriteOptions::ttl(secs(10)).sliding(true))?;
    for _ in 0..5 {
        clock.advance(secs(9));
        assert_eq!(store.get::<i32>("s")?, Some(1));
    }
    assert_eq!(store.ttl("s")?, KeyTtl::Remaining(secs(10)));
    clock.advance(secs(9));
    assert!(store.peek::<i32>("s")?.is_some());
    assert!(store.contains("s")?);
    clock.advance(secs(1));
    assert!(
        store.peek::<i32>("s")?.is_none(),
        "peek and contains must not renew"
    );
    // A write renews it too (keeping the sliding TTL), and so does an update.
    store.set_with("w", &1, WriteOptions::ttl(secs(10)).sliding(true))?;
    clock.advance(secs(9));
    store.set_with("w", &2, Ttl::Keep)?;
    clock.advance(secs(9));
    assert_eq!(store.incr("w", 1)?, 3);
    clock.advance(secs(9));
    assert!(store.contains("w")?);
    clock.advance(secs(1));
    assert!(!store.contains("w")?);
    // get_many touches as get does.
    store.set_with("m", &1, WriteOptions::ttl(secs(10)).sliding(true))?;
    clock.advance(secs(9));
    store.get_many::<i32>(&["m"])?;
    clock.advance(secs(9));
    assert!(store.contains("m")?);
    Ok(())
}

pub fn sliding_by_default(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual_with(|b| b.default_ttl(secs(10)).sliding(true));
    store.set("s", &1)?;
    store.set_with("fixed", &1, WriteOptions::ttl(secs(10)).sliding(false))?;
    clock.advance(secs(9));
    store.get::<i32>("s")?;
    store.get::<i32>("fixed")?;
    clock.advance(secs(9));
    assert!(store.contains("s")?);
    assert!(!store.contains("fixed")?);
    Ok(())
}

pub fn active_expiry_removes_entries_without_reads(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    for i in 0..500 {
        store.set_with(&format!("k{i}"), &i, ms(100 + i))?;
    }
    store.set("forever", &1)?;
    clock.advance(ms(349)); // k0..=k249 are due
    assert!(
        eventually(secs(10), || store.stats().expirations == 250),
        "active expiry removed {} of 250",
        store.stats().expirations
    );
    clock.advance(secs(1));
    assert!(eventually(secs(10), || store.stats().expirations == 500));
    assert_eq!(store.len()?, 1);
    let s = store.stats();
    assert_eq!((s.hits, s.misses), (0, 0), "nothing was read");
    Ok(())
}

pub fn old_deadline_never_removes_newer_value(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    store.set_with("k", &"old", secs(10))?;
    clock.advance(secs(5));
    store.set_with("k", &"new", secs(100))?;
    store.set_with("p", &"old", secs(10))?;
    store.persist("p")?;
    store.set_with("u", &1, secs(10))?;
    store.update_with("u", secs(100), |v: Option<i32>| {
        Ok::<_, Error>(v.map(|v| v + 1))
    })?;
    clock.advance(secs(6)); // past the old deadlines
    store.sweep_expired()?;
    assert_eq!(store.get::<String>("k")?.as_deref(), Some("new"));
    assert_eq!(store.get::<String>("p")?.as_deref(), Some("old"));
    assert_eq!(store.get::<i32>("u")?, Some(2));
    assert_eq!(store.stats().expirations, 0);
    // A deleted and re-created key is not removed by the deleted one's deadline either.
    store.set_with("d", &1, secs(10))?;
    store.delete("d")?;
    store.set("d", &2)?;
    clock.advance(secs(20));
    store.sweep_expired()?;
    assert_eq!(store.get::<i32>("d")?, Some(2));
    Ok(())
}

pub fn update_keeps_ttl_unless_told(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    store.set_with("k", &1, secs(10))?;
    clock.advance(secs(5));
    store.update("k", |v: Option<i32>| v.unwrap() + 1)?;
    assert_eq!(store.ttl("k")?, KeyTtl::Remaining(secs(5)));
    store.update_with("k", secs(30), |v: Option<i32>| {
        Ok::<_, Error>(v.map(|v| v + 1))
    })?;
    assert_eq!(store.ttl("k")?, KeyTtl::Remaining(secs(30)));
    store.update_with("k", Ttl::Never, |v: Option<i32>| Ok::<_, Error>(v))?;
    assert_eq!(store.ttl("k")?, KeyTtl::Never);
    assert_eq!(store.get::<i32>("k")?, Some(3));
    Ok(())
}

pub fn expired_entry_is_counted_once(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual_with(|b| b.active_expiry(false));
    store.set_with("a", &1, secs(1))?;
    store.set_with("b", &1, secs(1))?;
    store.set_with("c", &1, secs(1))?;
    clock.advance(secs(2));
    store.set("a", &2)?; // finds a dead entry: an expiration, not an overwrite
    assert!(!store.delete("b")?); // the same
    assert_eq!(store.stats().expirations, 2);
    assert_eq!(store.sweep_expired()?, 1); // only c is left to sweep
    assert_eq!(store.sweep_expired()?, 0);
    let s = store.stats();
    assert_eq!((s.expirations, s.deletes), (3, 0));
    assert_eq!(store.get::<i32>("a")?, Some(2));
    Ok(())
}

pub fn cleanup_inactive_removes_idle_entries(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    store.set("read", &1)?;
    store.set("idle", &1)?;
    store.set("written", &1)?;
    store.set("peeked", &1)?;
    clock.advance(secs(5));
    store.get::<i32>("read")?;
    store.set("written", &2)?;
    store.peek::<i32>("peeked")?; // a peek is not activity
    clock.advance(secs(5));
    assert_eq!(store.cleanup_inactive(secs(6))?, 2);
    assert_eq!(
        sorted(store.keys()?),
        vec!["read".to_string(), "written".to_string()]
    );
    assert_eq!(store.stats().inactive_removals, 2);
    Ok(())
}

// ---- concurrency -------------------------------------------------------------------------------

const THREADS: usize = 64;
const PER_THREAD: usize = 500;

fn on_threads<T: Send + 'static>(
    n: usize,
    store: &Store,
    work: impl Fn(Store, usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(n));
    let work = Arc::new(work);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (store, barrier, work) = (store.clone(), barrier.clone(), work.clone());
            std::thread::spawn(move || {
                barrier.wait();
                work(store, i)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

pub fn concurrent_incr_loses_nothing(h: &Harness) -> Result<()> {
    let store = h.store();
    let results = on_threads(THREADS, &store, |s, _| -> Result<Vec<i64>> {
        (0..PER_THREAD).map(|_| s.incr("n", 1)).collect()
    });
    let mut seen = Vec::new();
    for r in results {
        seen.extend(r?);
    }
    let total = (THREADS * PER_THREAD) as i64;
    assert_eq!(store.get::<i64>("n")?, Some(total));
    // Every intermediate value was returned to exactly one caller.
    seen.sort_unstable();
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    Ok(())
}

pub fn concurrent_update_loses_nothing(h: &Harness) -> Result<()> {
    #[derive(Serialize, Deserialize, Default)]
    struct Tally {
        count: u64,
        sum: u64,
        /// The last value each thread added: each thread's updates must apply in its order.
        last: Vec<Option<u64>>,
    }
    let store = h.store();
    let results = on_threads(THREADS, &store, |s, t| -> Result<()> {
        for i in 0..PER_THREAD {
            let value = (t * PER_THREAD + i) as u64;
            s.update("tally", |old: Option<Tally>| {
                let mut tally = old.unwrap_or_else(|| Tally {
                    last: vec![None; THREADS],
                    ..Tally::default()
                });
                assert!(
                    tally.last[t] < Some(value),
                    "thread {t} saw its own update undone"
                );
                tally.count += 1;
                tally.sum += value;
                tally.last[t] = Some(value);
                tally
            })?;
        }
        Ok(())
    });
    for r in results {
        r?;
    }
    let n = (THREADS * PER_THREAD) as u64;
    let tally = store.get::<Tally>("tally")?.unwrap();
    assert_eq!(tally.count, n);
    assert_eq!(tally.sum, n * (n - 1) / 2);
    Ok(())
}

pub fn racing_deletes_exactly_one_wins(h: &Harness) -> Result<()> {
    let store = h.store();
    let rounds = 200;
    for round in 0..rounds {
        store.set("k", &round)?;
        let wins: usize = on_threads(8, &store, |s, _| s.delete("k").unwrap() as usize)
            .into_iter()
            .sum();
        assert_eq!(wins, 1, "round {round}");
    }
    assert_eq!(store.stats().deletes, rounds as u64);
    Ok(())
}

pub fn concurrent_replace_sees_true_previous_values(h: &Harness) -> Result<()> {
    let store = h.store();
    store.set("k", &-1i64)?;
    let results = on_threads(16, &store, |s, t| -> Result<Vec<i64>> {
        (0..200)
            .map(|i| s.replace("k", &((t * 1000 + i) as i64)).map(|p| p.unwrap()))
            .collect()
    });
    let mut previous = Vec::new();
    for r in results {
        previous.extend(r?);
    }
    previous.push(store.get::<i64>("k")?.unwrap());
    previous.sort_unstable();
    // Each written value is seen exactly once: as someone's previous value, or as the final one.
    let mut expected: Vec<i64> = (0..16)
        .flat_map(|t| (0..200).map(move |i| (t * 1000 + i) as i64))
        .collect();
    expected.push(-1);
    expected.sort_unstable();
    assert_eq!(previous, expected);
    Ok(())
}

pub fn concurrent_setdefault_has_one_winner(h: &Harness) -> Result<()> {
    let store = h.store();
    for round in 0..50 {
        let key = format!("k{round}");
        let k = key.clone();
        let got = on_threads(8, &store, move |s, t| s.setdefault(&k, t).unwrap());
        let winner = store.get::<usize>(&key)?.unwrap();
        assert!(got.iter().all(|&g| g == winner), "round {round}: {got:?}");
    }
    Ok(())
}

pub fn concurrent_sets_and_expiry_stay_consistent(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    let results = on_threads(8, &store, |s, t| -> Result<()> {
        for i in 0..300 {
            let key = format!("k{}", i % 50);
            match (t + i) % 3 {
                0 => s.set_with(&key, &i, ms(1 + (i as u64 % 7)))?,
                1 => s.set(&key, &i)?,
                _ => {
                    s.delete(&key)?;
                }
            }
        }
        Ok(())
    });
    for r in results {
        r?;
    }
    let live_before: HashSet<String> = store.keys()?.into_iter().collect();
    let never: HashSet<String> = live_before
        .iter()
        .filter(|k| store.ttl(k).unwrap() == KeyTtl::Never)
        .cloned()
        .collect();
    clock.advance(secs(1));
    store.sweep_expired()?;
    let live_after: HashSet<String> = store.keys()?.into_iter().collect();
    assert_eq!(
        live_after, never,
        "exactly the entries without a deadline survive"
    );
    assert_eq!(store.len()?, never.len());
    Ok(())
}

// ---- moving whole stores -----------------------------------------------------------------------

pub fn export_import_round_trip(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    store.set("user", &ann())?;
    store.set_with("otp", &"1234", secs(60))?;
    store.set_bytes("blob", &[0, 1, 2, 255])?;
    store.set_with("gone", &1, secs(1))?;
    clock.advance(secs(1)); // "gone" is dead: not exported
    let mut out = Vec::new();
    assert_eq!(store.export(&mut out)?, 3);
    let text = String::from_utf8(out.clone()).unwrap();
    assert_eq!(text.lines().count(), 3);
    if h.encrypted() {
        assert!(
            text.contains(r#""sealed":""#) && !text.contains("AAEC"),
            "{text}"
        );
    } else {
        assert!(text.contains(r#""bytes":"AAEC/w==""#), "{text}");
    }

    let (copy, copy_clock) = h.manual();
    copy_clock.set(clock.now());
    assert_eq!(copy.import(&out[..])?, 3);
    assert_eq!(copy.get::<User>("user")?, Some(ann()));
    assert_eq!(
        copy.get_bytes("blob")?.as_deref(),
        Some(&[0u8, 1, 2, 255][..])
    );
    assert_eq!(copy.ttl("otp")?, KeyTtl::Remaining(secs(59)));
    assert_eq!(copy.ttl("user")?, KeyTtl::Never);
    Ok(())
}

pub fn import_with_a_bad_line_changes_nothing(h: &Harness) -> Result<()> {
    let store = h.store();
    store.set("keep", &1)?;
    let input = concat!(
        r#"{"key":"a","ttl_ms":null,"value":1}"#,
        "\n",
        r#"{"key":"b","ttl_ms":null}"#,
        "\n"
    );
    match store.import(input.as_bytes()) {
        Err(Error::Decode { message, .. }) => assert!(message.contains("line 2"), "{message}"),
        other => panic!("expected a decode error, got {other:?}"),
    }
    let bad_key = r#"{"key":"","ttl_ms":null,"value":1}"#;
    assert!(matches!(
        store.import(bad_key.as_bytes()),
        Err(Error::InvalidKey { .. })
    ));
    assert!(store.import(&b"not json\n"[..]).is_err());
    let absurd_ttl = format!(r#"{{"key":"t","ttl_ms":{},"value":1}}"#, u64::MAX);
    assert!(matches!(
        store.import(absurd_ttl.as_bytes()),
        Err(Error::InvalidTtl { .. })
    ));
    let zero_ttl = r#"{"key":"t","ttl_ms":0,"value":1}"#;
    assert!(matches!(
        store.import(zero_ttl.as_bytes()),
        Err(Error::InvalidTtl { .. })
    ));
    assert_eq!(store.keys()?, vec!["keep".to_string()]);
    Ok(())
}

pub fn copy_to_another_store_keeps_values_and_ttls(h: &Harness) -> Result<()> {
    let (store, clock) = h.manual();
    store.set("typed", &ann())?;
    store.set_bytes("raw", b"xyz")?;
    store.set_with("ttl", &1, secs(30))?;
    let (target, target_clock) = h.manual();
    target_clock.set(clock.now());
    assert_eq!(store.copy_to(&target)?, 3);
    assert_eq!(target.get::<User>("typed")?, Some(ann()));
    assert_eq!(target.get_bytes("raw")?.as_deref(), Some(&b"xyz"[..]));
    assert_eq!(target.ttl("ttl")?, KeyTtl::Remaining(secs(30)));
    // A target with a smaller value limit refuses the whole copy.
    let small = h.build(|b| b.max_value_size(4));
    assert!(matches!(
        store.copy_to(&small),
        Err(Error::ValueTooLarge { .. })
    ));
    assert!(small.is_empty()?);
    Ok(())
}
