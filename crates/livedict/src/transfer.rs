//! Moving whole stores: export to and import from JSON lines, and copying between backends.
//!
//! One entry per line:
//!
//! ```text
//! {"key":"user:1","ttl_ms":59000,"value":{"name":"ann"}}
//! {"key":"blob","ttl_ms":null,"bytes":"AAEC"}
//! ```
//!
//! `value` holds a typed value as JSON (whichever codec stored it; an import stores it with the
//! importing store's codec); `bytes` holds raw bytes (`set_bytes`) in standard base64; `sealed`
//! holds an encrypted value exactly as stored, in base64 (it stays encrypted, bound to its key
//! name, and is readable by a store with the same keyring); `ttl_ms` is the time left (`null`:
//! never expires), applied as a fixed TTL on import.

use std::io::{BufRead, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::backend::{BatchOp, Expiry, KeyTtl, WriteExpiry};
use crate::codec;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::key;

#[derive(Serialize, Deserialize)]
struct Line {
    key: String,
    ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bytes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_hash: Option<String>,
}

/// One live entry with its stored bytes and time left.
pub(crate) struct Exported {
    pub(crate) key: String,
    pub(crate) stored: Bytes,
    pub(crate) ttl: KeyTtl,
}

/// Writes `entries` as JSON lines; returns how many.
pub(crate) fn write_lines(entries: &[Exported], mut writer: impl Write) -> Result<usize> {
    let io = |e: std::io::Error| Error::Backend(Box::new(e));
    for e in entries {
        let ttl_ms = match e.ttl {
            KeyTtl::Remaining(d) => Some(d.as_millis().max(1) as u64),
            _ => None,
        };
        let mut line = Line {
            key: e.key.clone(),
            ttl_ms,
            value: None,
            bytes: None,
            sealed: None,
            password_hash: None,
        };
        if crate::crypto::is_encrypted(&e.stored) {
            // Encrypted values stay encrypted: exported as stored, bound to their key name.
            line.sealed = Some(BASE64.encode(&e.stored));
        } else {
            if let Ok(v) = codec::decode::<serde_json::Value>(&e.stored) {
                line.value = Some(v);
            } else if let Ok(phc) = codec::decode_password_hash(&e.stored) {
                line.password_hash = Some(phc);
            } else {
                let raw = codec::decode_raw(e.stored.clone())?;
                line.bytes = Some(BASE64.encode(&raw));
            }
        }
        serde_json::to_writer(&mut writer, &line).map_err(|e| Error::Encode(Box::new(e)))?;
        writer.write_all(b"\n").map_err(io)?;
    }
    writer.flush().map_err(io)?;
    Ok(entries.len())
}

/// Parses JSON lines into batch operations, validating every line first: a bad line is an error
/// naming it, and nothing is applied.
pub(crate) fn parse_lines(engine: &Engine, reader: impl BufRead) -> Result<Vec<BatchOp>> {
    let mut ops = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| Error::Backend(Box::new(e)))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| Error::decode(format!("import, line {}: {what}", i + 1), None);
        let parsed: Line =
            serde_json::from_str(&line).map_err(|e| bad(format!("not an entry: {e}")))?;
        key::validate(&parsed.key)?;
        let base64 = |b: String| {
            BASE64
                .decode(b.as_bytes())
                .map_err(|e| bad(format!("bad base64: {e}")))
        };
        let key = &parsed.key;
        let value = match (
            parsed.value,
            parsed.bytes,
            parsed.sealed,
            parsed.password_hash,
        ) {
            (Some(v), None, None, None) => engine.encode(key, &v, false)?,
            (None, Some(b), None, None) => engine.encode_raw(key, &base64(b)?, false)?,
            (None, None, Some(s), None) => {
                let stored = Bytes::from(base64(s)?);
                if !crate::crypto::is_encrypted(&stored) {
                    return Err(bad("\"sealed\" holds no encrypted value".into()));
                }
                engine.check_size(stored)?
            }
            // A dump's password hash is restored as it was (this is an administrator's restore,
            // not a way around set_password).
            (None, None, None, Some(phc)) if phc.starts_with("$argon2") => {
                engine.seal_if_needed(key, codec::encode_password_hash(&phc), false)?
            }
            _ => {
                return Err(bad(
                    "needs exactly one of \"value\", \"bytes\", \"sealed\" and \"password_hash\""
                        .into(),
                ));
            }
        };
        let expiry = match parsed.ttl_ms {
            Some(ttl) => Expiry::After {
                ttl: crate::ttl::to_millis(std::time::Duration::from_millis(ttl))?,
                sliding: false,
            },
            None => Expiry::Never,
        };
        ops.push(BatchOp::Set {
            key: parsed.key,
            value,
            expiry: WriteExpiry::replace(expiry),
        });
    }
    Ok(ops)
}

/// Batch operations that store `entries` verbatim (stored bytes, header included, so the target
/// reads them whatever its codec).
///
/// # Errors
/// [`Error::ValueTooLarge`] if a value exceeds the target's limit.
pub(crate) fn copy_ops(target: &Engine, entries: Vec<Exported>) -> Result<Vec<BatchOp>> {
    entries
        .into_iter()
        .map(|e| {
            // A plain value copied into a store that encrypts every value is encrypted on the way.
            let stored = if crate::crypto::is_encrypted(&e.stored) {
                e.stored
            } else {
                target.seal_if_needed(&e.key, e.stored, false)?
            };
            Ok(BatchOp::Set {
                value: target.check_size(stored)?,
                key: e.key,
                expiry: WriteExpiry::replace(match e.ttl {
                    KeyTtl::Remaining(d) => Expiry::After {
                        ttl: (d.as_millis() as u64).max(1),
                        sliding: false,
                    },
                    _ => Expiry::Never,
                }),
            })
        })
        .collect()
}
