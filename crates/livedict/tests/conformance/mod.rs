//! The conformance suite: SPEC sections 1-3 as one list of cases, written once and instantiated
//! per backend with one line:
//!
//! ```ignore
//! mod conformance;
//! conformance_suite!(memory, || std::sync::Arc::new(livedict::MemoryBackend::new()));
//! conformance_suite!(memory_async, setup, conformance::Mode::Async); // through AsyncLiveDict
//! ```
//!
//! The setup closure returns a fresh, empty backend each time it is called. The cases use a
//! [`Store`], which is a `LiveDict` or, in the async modes, an `AsyncLiveDict` run on a runtime
//! the harness owns. TTL cases use a manual clock; nothing here sleeps to let time pass.

#![allow(dead_code)]

pub mod cases;
pub mod crypto_cases;
pub mod event_cases;
pub mod namespace_cases;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use livedict::{Backend, Builder, Clock, LiveDict, ManualClock, Result};

pub use store::Store;

/// Creates stores over fresh backends of one kind, each configured by the suite's mode.
pub struct Harness {
    setup: Box<dyn Fn() -> Arc<dyn Backend>>,
    mode: Mode,
    /// The runtime of the async modes: multi-threaded, so that its workers drive the stores'
    /// expiry tasks, timers and I/O while cases block on calls from their own threads.
    #[cfg(feature = "async")]
    runtime: Option<tokio::runtime::Runtime>,
}

/// How every store of a suite is configured, and which front-end the cases go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The defaults.
    Plain,
    /// Every value encrypted under one test keyring (the same for every store of the harness,
    /// so that copies between them stay readable).
    Encrypted,
    /// The defaults, through `AsyncLiveDict`.
    #[cfg(feature = "async")]
    Async,
    /// Encrypted as [`Mode::Encrypted`], through `AsyncLiveDict`.
    #[cfg(feature = "async")]
    AsyncEncrypted,
}

impl Mode {
    /// Whether every value is encrypted.
    pub fn encrypted(self) -> bool {
        match self {
            Mode::Encrypted => true,
            #[cfg(feature = "async")]
            Mode::AsyncEncrypted => true,
            _ => false,
        }
    }

    /// Whether stores are `AsyncLiveDict`s.
    pub fn is_async(self) -> bool {
        match self {
            #[cfg(feature = "async")]
            Mode::Async | Mode::AsyncEncrypted => true,
            _ => false,
        }
    }

    fn configure(self, b: Builder) -> Builder {
        if self.encrypted() {
            b.keyring(test_keyring())
        } else {
            b
        }
    }
}

/// The keyring of the encrypted mode.
pub fn test_keyring() -> livedict::Keyring {
    livedict::Keyring::from_bytes(1, &[0x5A; 32]).unwrap()
}

impl Harness {
    pub fn new(setup: impl Fn() -> Arc<dyn Backend> + 'static, mode: Mode) -> Self {
        Harness {
            setup: Box::new(setup),
            mode,
            #[cfg(feature = "async")]
            runtime: mode.is_async().then(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("start the tokio runtime")
            }),
        }
    }

    /// Whether the suite runs with every value encrypted.
    pub fn encrypted(&self) -> bool {
        self.mode.encrypted()
    }

    /// Whether the suite runs through `AsyncLiveDict`.
    pub fn is_async(&self) -> bool {
        self.mode.is_async()
    }

    /// A fresh backend.
    pub fn backend(&self) -> Arc<dyn Backend> {
        (self.setup)()
    }

    /// A store with the defaults over a fresh backend.
    pub fn store(&self) -> Store {
        self.build(|b| b)
    }

    /// A store over a fresh backend, configured by the mode, then by `configure`.
    pub fn build(&self, configure: impl FnOnce(Builder) -> Builder) -> Store {
        let backend = self.backend();
        self.open(backend, |b| configure(self.mode.configure(b)))
            .expect("build store")
    }

    /// A store of the suite's front-end over `backend`, configured by `configure` alone (not by
    /// the mode): for cases that choose every setting themselves, or expect the build to fail.
    pub fn open(
        &self,
        backend: Arc<dyn Backend>,
        configure: impl FnOnce(Builder) -> Builder,
    ) -> Result<Store> {
        let builder = configure(LiveDict::builder().shared_backend(backend));
        #[cfg(feature = "async")]
        if let Some(rt) = &self.runtime {
            let _in_runtime = rt.enter();
            return Ok(Store::Async {
                store: builder.build_async()?,
                rt: rt.handle().clone(),
            });
        }
        Ok(Store::Sync(builder.build()?))
    }

    /// A store with a manual clock.
    pub fn manual(&self) -> (Store, ManualClock) {
        self.manual_with(|b| b)
    }

    /// A store with a manual clock, configured by `configure`.
    pub fn manual_with(&self, configure: impl FnOnce(Builder) -> Builder) -> (Store, ManualClock) {
        let clock = ManualClock::new();
        let store = self.build(|b| configure(b.clock(Clock::Manual(clock.clone()))));
        (store, clock)
    }
}

#[cfg(feature = "async")]
impl Drop for Harness {
    fn drop(&mut self) {
        // Never wait here for what a case left running (a hook stuck on purpose, say).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Waits (bounded) for a background effect, such as active expiry, to become visible.
/// Returns whether `condition` became true within `limit`.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let give_up = Instant::now() + limit;
    while Instant::now() < give_up {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    condition()
}

/// Instantiates every conformance case for one backend: `conformance_suite!(name, setup)`, or
/// `conformance_suite!(name, setup, mode)` with a [`Mode`] (for instance
/// `conformance::Mode::Async`, with the `async` feature).
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $setup:expr) => {
        $crate::conformance_suite!($name, $setup, $crate::conformance::Mode::Plain);
    };
    ($name:ident, $setup:expr, $mode:expr) => {
        $crate::conformance_suite!(@cases $name, $setup, $mode, [
            // SPEC 1: keys and values
            invalid_keys_are_refused_and_change_nothing,
            longest_key_and_unicode_keys_work,
            typed_values_round_trip,
            null_is_a_value,
            raw_bytes_round_trip_and_do_not_mix_with_typed,
            wrong_type_read_is_decode_error_and_keeps_value,
            oversized_values_are_refused_and_change_nothing,
            corrupted_or_foreign_bytes_are_format_errors,
            codecs_read_each_others_values,
            // SPEC 2: the dictionary
            get_forms_on_missing_keys,
            set_overwrites_and_delete_reports_existence,
            contains_len_keys_values_items_iter,
            set_many_and_get_many,
            set_many_with_a_bad_pair_writes_nothing,
            setdefault_gets_or_inserts,
            pop_popitem_and_clear,
            merge_updates_fields_of_a_map,
            replace_returns_previous_value,
            update_runs_closure_once_and_returns_new_value,
            try_update_error_or_none,
            reentrant_use_inside_update_is_an_error,
            incr_counts_and_refuses_non_integers_and_overflow,
            batch_is_all_or_nothing,
            a_key_written_twice_in_a_batch_expires_at_its_last_deadline,
            batch_is_never_seen_half_applied,
            wait_for_returns_at_once_later_or_on_timeout,
            stats_count_operations,
            closed_store_refuses_calls,
            // SPEC 3: time to live
            zero_ttl_is_refused,
            the_longest_ttl_is_kept,
            entry_is_invisible_from_its_deadline_on_every_read_path,
            overwrite_replaces_ttl_unless_kept,
            default_ttl_applies_and_never_overrides_it,
            ttl_expire_and_persist,
            millisecond_resolution,
            sliding_ttl_renews_on_get_and_write_not_on_peek,
            sliding_by_default,
            active_expiry_removes_entries_without_reads,
            old_deadline_never_removes_newer_value,
            update_keeps_ttl_unless_told,
            expired_entry_is_counted_once,
            cleanup_inactive_removes_idle_entries,
            // concurrency
            concurrent_incr_loses_nothing,
            concurrent_update_loses_nothing,
            racing_deletes_exactly_one_wins,
            concurrent_replace_sees_true_previous_values,
            concurrent_setdefault_has_one_winner,
            concurrent_sets_and_expiry_stay_consistent,
            // moving whole stores
            export_import_round_trip,
            import_with_a_bad_line_changes_nothing,
            copy_to_another_store_keeps_values_and_ttls,
            // SPEC 4: events and hooks
            set_events_carry_new_and_previous_values,
            access_events_only_for_hits_not_peeks,
            delete_events_only_when_something_was_deleted,
            expire_fires_exactly_once_with_last_value,
            events_of_one_key_arrive_in_order,
            hooks_filter_by_kind_key_and_prefix,
            hooks_disable_enable_unregister,
            failing_and_panicking_hooks_are_isolated,
            set_returns_while_a_hook_is_blocked,
            overrunning_hook_times_out_and_others_go_on,
            hook_changes_apply_from_the_next_event_across_a_stuck_hook,
            full_queue_drops_newest,
            full_queue_drops_oldest,
            events_no_hook_accepts_take_no_room,
            batch_rewrites_keep_expiry_exact,
            wide_mixed_batch_gives_each_key_its_own_outcome,
            full_queue_blocks_publisher_and_loses_nothing,
            entry_hooks_on_access_and_on_expire,
            hooks_may_use_the_store,
            clear_update_and_inactive_events,
            close_delivers_queued_events_and_never_hangs,
            close_drops_and_counts_what_its_grace_period_did_not_deliver,
            unbounded_durations_mean_no_limit,
            slow_expire_hook_never_delays_other_expirations,
            // SPEC 5: encryption, secrets, passwords
            encrypted_values_round_trip_through_every_path,
            tampered_or_moved_ciphertexts_are_refused,
            rotate_rekey_and_retire_keys,
            secret_values_are_encrypted_whatever_they_look_like,
            password_keys_store_only_hashes,
            // SPEC 7: namespaces
            namespace_handles_have_the_dictionary_api_under_their_prefix,
            namespace_keys_and_clear_never_reach_a_sibling,
            namespace_cleanup_inactive_stays_under_its_prefix,
            namespace_parameter_values_are_escaped_text,
            namespace_binding_errors_name_the_parameter,
            namespace_hooks_hear_only_their_namespace,
            namespace_ttls_inherit_and_keys_override,
            namespace_describe_lists_the_schema,
            typed_keys_carry_type_default_ttl_and_secrecy,
            // SPEC 5: access control
            access_policy_is_asked_before_every_operation,
            access_policy_sees_full_keys_of_namespace_handles,
            admin_operations_ask_the_policy,
            // SPEC 6: locks
            lock_excludes_others_until_released,
            lock_lease_expires_and_only_the_owner_releases,
            lock_protected_read_modify_write_loses_nothing,
            get_or_compute_loads_once_per_key,
            locks_and_namespaces_work_together,
        ]);
    };
    (@cases $name:ident, $setup:expr, $mode:expr, [$($case:ident),* $(,)?]) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $case() -> livedict::Result<()> {
                    let harness = $crate::conformance::Harness::new($setup, $mode);
                    $crate::conformance::cases::$case(&harness)
                }
            )*
        }
    };
}
