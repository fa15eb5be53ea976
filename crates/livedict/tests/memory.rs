//! The conformance suite on the memory backend, plus memory-specific scenarios.

#[macro_use]
mod conformance;

use std::sync::Arc;

use livedict::MemoryBackend;

conformance_suite!(memory, || Arc::new(MemoryBackend::new()));
conformance_suite!(memory_one_shard, || Arc::new(MemoryBackend::with_shards(1)));
conformance_suite!(
    memory_encrypted,
    || Arc::new(MemoryBackend::new()),
    conformance::Mode::Encrypted
);
