//! Conformance cases of SPEC section 5: encryption at rest, key rotation, secret and password
//! keys. Tampering is done through the backend, below the store, as an attacker with access to
//! the storage would.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use livedict::backend::{Condition, Expiry, ReadMode, WriteExpiry};
use livedict::{
    Backend, Bytes, Error, EventKind, Keyring, MemoryBackend, Now, Result, WriteOptions,
};
use serde_json::json;

use super::{Harness, Store};

const NEVER: WriteExpiry = WriteExpiry {
    expiry: Expiry::Never,
    keep_existing: false,
};

fn stored(backend: &Arc<dyn Backend>, key: &str) -> Bytes {
    let now = livedict::Clock::System.now();
    backend
        .get(key, &Now::fixed(now), ReadMode::Peek)
        .unwrap()
        .expect("stored")
}

fn put(backend: &Arc<dyn Backend>, key: &str, bytes: Bytes) {
    let now = livedict::Clock::System.now();
    backend
        .set(key, bytes, NEVER, Condition::Always, now)
        .unwrap();
}

fn is_encrypted(b: &[u8]) -> bool {
    b.len() > 3 && b[0] == 0xD7 && b[2] & 0x10 != 0
}

fn key_id(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[3..7].try_into().unwrap())
}

fn store_on(h: &Harness, backend: &Arc<dyn Backend>, keyring: Option<Keyring>, all: bool) -> Store {
    h.open(backend.clone(), |b| match keyring {
        Some(k) => b.keyring(k).encrypt_all(all),
        None => b,
    })
    .unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn encrypted_values_round_trip_through_every_path(h: &Harness) -> Result<()> {
    let backend = h.backend();
    let store = store_on(h, &backend, Some(Keyring::generate(1)), true);
    let (tx, rx) = mpsc::channel();
    store.on(EventKind::Set, move |e| {
        tx.send(e.value::<serde_json::Value>()?)?;
        Ok(())
    })?;
    store.set("doc", &json!({"card": "4111-1111"}))?;
    store.set_bytes("raw", b"plain bytes")?;
    assert_eq!(store.incr("n", 2)?, 2);
    store.merge("doc", &json!({"cvv": "123"}))?;
    store.update("list", |v: Option<Vec<u8>>| v.unwrap_or_default())?;
    assert_eq!(store.setdefault("d", 5)?, 5);
    assert_eq!(store.replace("d", &6)?, Some(5));
    for key in ["doc", "raw", "n", "list", "d"] {
        let b = stored(&backend, key);
        assert!(is_encrypted(&b), "{key} is stored in the clear");
    }
    assert!(!contains(&stored(&backend, "doc"), b"4111"));
    assert!(!contains(&stored(&backend, "raw"), b"plain bytes"));
    assert_eq!(
        store.get::<serde_json::Value>("doc")?,
        Some(json!({"card": "4111-1111", "cvv": "123"}))
    );
    assert_eq!(
        store.get_bytes("raw")?.as_deref(),
        Some(&b"plain bytes"[..])
    );
    assert_eq!(store.get_many::<i64>(&["n", "d"])?, vec![Some(2), Some(6)]);
    assert_eq!(store.keys()?.len(), 5);
    assert_eq!(
        store
            .iter::<serde_json::Value>()?
            .filter(|r| r.is_ok())
            .count(),
        4
    );
    assert_eq!(store.pop::<i64>("d")?, Some(6));
    // A decode error never quotes the decrypted value.
    store.set("card", &"4111 1111 1111 1111")?;
    let e = store.get::<u64>("card").unwrap_err().to_string();
    assert!(!e.contains("4111"), "{e}");
    // Copying plain values into a store that encrypts every value encrypts them on the way.
    let plain = h.open(Arc::new(MemoryBackend::new()), |b| b)?;
    plain.set("p", &"from a plain store")?;
    let target_backend = h.backend();
    let target = store_on(h, &target_backend, Some(Keyring::generate(1)), true);
    plain.copy_to(&target)?;
    assert!(is_encrypted(&stored(&target_backend, "p")));
    assert_eq!(
        target.get::<String>("p")?.as_deref(),
        Some("from a plain store")
    );
    // Hooks decode encrypted values like any other.
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Some(json!({"card": "4111-1111"}))
    );
    Ok(())
}

pub fn tampered_or_moved_ciphertexts_are_refused(h: &Harness) -> Result<()> {
    let backend = h.backend();
    let ring = Keyring::from_bytes(1, &[7u8; 32])?;
    let store = store_on(h, &backend, Some(ring), true);
    store.set("a", &"secret a")?;
    store.set("b", &"secret b")?;
    let a = stored(&backend, "a");
    let crypto = |r: Result<Option<String>>| matches!(r, Err(Error::Crypto(_)));

    // Moved to another key: bound to its key name, it does not decrypt there.
    put(&backend, "b", a.clone());
    assert!(crypto(store.get::<String>("b")));
    // Any flipped bit, anywhere past the magic and version bytes.
    for i in 2..a.len() {
        let mut bad = a.to_vec();
        bad[i] ^= 0x04;
        put(&backend, "a", Bytes::from(bad.clone()));
        let r = store.get::<String>("a");
        assert!(
            matches!(r, Err(Error::Crypto(_) | Error::Format(_))),
            "byte {i}: {r:?}"
        );
        assert_eq!(
            stored(&backend, "a"),
            Bytes::from(bad),
            "a read changed nothing"
        );
    }
    // Truncated.
    put(&backend, "a", a.slice(..a.len() - 1));
    assert!(crypto(store.get::<String>("a")));
    put(&backend, "a", a.slice(..10));
    assert!(matches!(store.get::<String>("a"), Err(Error::Format(_))));
    put(&backend, "a", a.clone());
    assert_eq!(store.get::<String>("a")?.as_deref(), Some("secret a"));

    // A store with other key material under the same id, or an unknown id, or no keyring.
    let wrong = store_on(h, &backend, Some(Keyring::from_bytes(1, &[8u8; 32])?), true);
    assert!(crypto(wrong.get::<String>("a")));
    let unknown = store_on(h, &backend, Some(Keyring::from_bytes(2, &[7u8; 32])?), true);
    assert!(crypto(unknown.get::<String>("a")));
    let none = store_on(h, &backend, None, true);
    assert!(crypto(none.get::<String>("a")));
    assert!(matches!(none.get_bytes("a"), Err(Error::Crypto(_))));

    // A plain value injected into a store that encrypts every value is refused.
    let plain = h.open(backend.clone(), |b| b)?;
    plain.set("injected", &"looks legitimate")?;
    assert!(crypto(store.get::<String>("injected")));
    plain.set_bytes("injected raw", b"raw and plain")?;
    assert!(matches!(
        store.get_bytes("injected raw"),
        Err(Error::Crypto(_))
    ));
    Ok(())
}

pub fn rotate_rekey_and_retire_keys(h: &Harness) -> Result<()> {
    let backend = h.backend();
    let store = store_on(h, &backend, Some(Keyring::generate(1)), true);
    let n = 600;
    let mut batch = store.batch();
    for i in 0..n {
        batch.set(&format!("k{i}"), &i)?;
    }
    store.apply(batch)?;
    assert_eq!(key_id(&stored(&backend, "k0")), 1);

    store.rotate_key(Keyring::generate(2))?;
    store.set("new", &"after rotation")?;
    assert_eq!(
        key_id(&stored(&backend, "new")),
        2,
        "new writes use the newest key"
    );
    assert_eq!(store.get::<i32>("k7")?, Some(7), "old values stay readable");
    match store.retire_key(1) {
        Err(Error::Crypto(msg)) => assert!(msg.contains(&n.to_string()), "{msg}"),
        other => panic!("retiring a used key must fail, got {other:?}"),
    }
    assert!(
        matches!(store.retire_key(2), Err(Error::Crypto(_))),
        "the newest key"
    );
    assert!(matches!(
        store.rotate_key(Keyring::generate(2)),
        Err(Error::Crypto(_))
    ));

    let mut calls = Vec::new();
    let rewritten = store.rekey(|done, total| calls.push((done, total)))?;
    assert_eq!(rewritten, n);
    assert_eq!(calls.last(), Some(&(n + 1, n + 1)));
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "{calls:?}");
    assert_eq!(key_id(&stored(&backend, "k0")), 2);
    assert_eq!(
        store.rekey(|_, _| {})?,
        0,
        "running it again finds nothing to do"
    );
    store.retire_key(1)?;
    assert!(
        matches!(store.retire_key(1), Err(Error::Crypto(_))),
        "already gone"
    );
    for i in [0, 299, 599] {
        assert_eq!(store.get::<i32>(&format!("k{i}"))?, Some(i));
    }
    // rekey keeps deadlines as they are: a sliding entry is not renewed by it.
    let clock = livedict::ManualClock::new();
    let sliding = h.open(h.backend(), |b| {
        b.clock(livedict::Clock::Manual(clock.clone()))
            .keyring(Keyring::generate(1))
    })?;
    sliding.set_with(
        "s",
        &1,
        WriteOptions::ttl(Duration::from_secs(10)).sliding(true),
    )?;
    clock.advance(Duration::from_secs(8));
    sliding.rotate_key(Keyring::generate(2))?;
    assert_eq!(sliding.rekey(|_, _| {})?, 1);
    assert_eq!(
        sliding.ttl("s")?,
        livedict::KeyTtl::Remaining(Duration::from_secs(2))
    );
    // Rotating in a store without a keyring is refused.
    let plain = h.store();
    if !h.encrypted() {
        assert!(matches!(
            plain.rotate_key(Keyring::generate(9)),
            Err(Error::Crypto(_))
        ));
    }
    Ok(())
}

pub fn secret_values_are_encrypted_whatever_they_look_like(h: &Harness) -> Result<()> {
    let backend = h.backend();
    let store = store_on(h, &backend, Some(Keyring::generate(1)), false);
    store.set("public", &"visible")?;
    store.set_bytes("public raw", b"plain bytes")?;
    store.set_with("token", &"s3cr3t", WriteOptions::new().secret())?;
    assert!(!is_encrypted(&stored(&backend, "public")));
    assert!(!is_encrypted(&stored(&backend, "public raw")));
    assert_eq!(
        store.get_bytes("public raw")?.as_deref(),
        Some(&b"plain bytes"[..])
    );
    assert!(is_encrypted(&stored(&backend, "token")));
    assert_eq!(store.get::<String>("token")?.as_deref(), Some("s3cr3t"));

    // A value shaped exactly like a ciphertext is encrypted all the same.
    let ciphertext = stored(&backend, "token");
    store.set_bytes_with("lookalike", &ciphertext, WriteOptions::new().secret())?;
    let lookalike = stored(&backend, "lookalike");
    assert!(is_encrypted(&lookalike));
    assert_ne!(&lookalike[..], &ciphertext[..]);
    assert_eq!(
        store.get_bytes("lookalike")?.as_deref(),
        Some(&ciphertext[..])
    );

    // The key stays secret: a plain write over it is encrypted too.
    store.set("token", &"rotated token")?;
    assert!(is_encrypted(&stored(&backend, "token")));
    assert_eq!(
        store.replace("token", &"third".to_string())?.as_deref(),
        Some("rotated token")
    );
    assert!(is_encrypted(&stored(&backend, "token")));
    assert_eq!(store.get::<String>("token")?.as_deref(), Some("third"));
    // Deleted, the key is no longer secret.
    store.delete("token")?;
    store.set("token", &"public now")?;
    assert!(!is_encrypted(&stored(&backend, "token")));
    // Updates keep a secret encrypted.
    store.set_with("count", &1, WriteOptions::new().secret())?;
    assert_eq!(store.incr("count", 1)?, 2);
    assert!(is_encrypted(&stored(&backend, "count")));

    // A secret needs a keyring: refused, nothing written.
    let plain = store_on(h, &backend, None, false);
    let r = plain.set_with("nokey", &"x", WriteOptions::new().secret());
    assert!(matches!(r, Err(Error::Crypto(_))));
    assert!(!plain.contains("nokey")?);
    Ok(())
}

pub fn password_keys_store_only_hashes(h: &Harness) -> Result<()> {
    let backend = h.backend();
    for (store, encrypted) in [
        (store_on(h, &backend, None, false), false),
        (
            store_on(h, &backend, Some(Keyring::generate(1)), true),
            true,
        ),
    ] {
        let key = format!("pw-{encrypted}");
        store.set_password(&key, "correct horse battery")?;
        let raw = stored(&backend, &key);
        assert!(
            !contains(&raw, b"correct horse"),
            "the password itself was stored"
        );
        assert_eq!(is_encrypted(&raw), encrypted);
        let phc = store.password_hash(&key)?.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert_eq!(
            store.verify_password(&key, "correct horse battery")?,
            Some(true)
        );
        assert_eq!(store.verify_password(&key, "wrong")?, Some(false));
        assert_eq!(store.verify_password("missing", "x")?, None);
        assert!(matches!(
            store.get::<String>(&key),
            Err(Error::AccessDenied(_))
        ));
        assert!(matches!(store.get_bytes(&key), Err(Error::AccessDenied(_))));
        // A value that looks like a hash is just a string: no hash can be injected.
        store.set("fake", &phc)?;
        assert_eq!(store.get::<String>("fake")?, Some(phc.clone()));
        assert!(matches!(
            store.verify_password("fake", "correct horse battery"),
            Err(Error::Decode { .. })
        ));
    }
    Ok(())
}
