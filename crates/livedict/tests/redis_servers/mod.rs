//! The servers of the Redis tests: `scripts/test` starts a server and a 3-master cluster with
//! `scripts/redis` and exports `LIVEDICT_TEST_REDIS_URL` and `LIVEDICT_TEST_REDIS_CLUSTER_URLS`.
//! Without them these helpers panic: a missing server is never a pass.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};

/// The single server.
pub fn server_url() -> String {
    std::env::var("LIVEDICT_TEST_REDIS_URL").expect(
        "LIVEDICT_TEST_REDIS_URL is not set: the Redis tests need a server (scripts/test starts one)",
    )
}

/// The cluster's masters.
pub fn cluster_urls() -> Vec<String> {
    std::env::var("LIVEDICT_TEST_REDIS_CLUSTER_URLS")
        .expect(
            "LIVEDICT_TEST_REDIS_CLUSTER_URLS is not set: the Redis Cluster tests need a cluster \
             (scripts/test starts one)",
        )
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// A store prefix no other test, process or earlier run uses.
pub fn fresh_prefix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "t{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
