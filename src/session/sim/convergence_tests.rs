//! Convergence: two stores built by any interleaving of adds (the
//! same bytes added on both sides included), edits and trash converge in one
//! session, whichever protocol (v2 with coded reconciliation or full lists),
//! and the next session moves nothing.

use proptest::prelude::*;

use super::net::Path;
use super::store::{asset, SimStore};
use super::{v1_tests, v2_tests};
use crate::asset::{MetaUpdate, Summary};

/// One change to one side's store.
#[derive(Debug, Clone)]
enum Op {
    /// Add asset `id` (same id, same bytes) at time `at`, under a name of
    /// this side's.
    Add { side: usize, id: u8, at: i64 },
    /// Edit the description of asset `id` at time `at`, if this side holds it.
    Edit {
        side: usize,
        id: u8,
        at: i64,
        text: u8,
    },
    /// Trash (or restore) asset `id` at time `at`, if this side holds it.
    Trash {
        side: usize,
        id: u8,
        at: i64,
        trashed: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let side = 0..2usize;
    let id = 0..12u8;
    // Few distinct times, so equal update times (the digest tie-break) occur.
    let at = 1..6i64;
    prop_oneof![
        3 => (side.clone(), id.clone(), at.clone()).prop_map(|(side, id, at)| Op::Add { side, id, at }),
        2 => (side.clone(), id.clone(), at.clone(), 0..3u8)
            .prop_map(|(side, id, at, text)| Op::Edit { side, id, at, text }),
        1 => (side, id, at, any::<bool>())
            .prop_map(|(side, id, at, trashed)| Op::Trash { side, id, at, trashed }),
    ]
}

/// Both stores after `ops`.
fn build(ops: &[Op]) -> (SimStore, SimStore) {
    let mut stores = [SimStore::default(), SimStore::default()];
    for op in ops {
        match *op {
            Op::Add { side, id, at } => {
                let mut bundle = asset(u64::from(id), 40 + usize::from(id), 1);
                // Added independently: the creation time and the name are
                // this side's own.
                bundle.meta.created_at_ms = 1_000 + at * 10 + side as i64;
                bundle.meta.name = format!("side {side}'s copy of {id}");
                stores[side].push(bundle).expect("valid asset");
            }
            Op::Edit { side, id, at, text } => edit(&mut stores[side], id, |m| {
                m.description = format!("text {text}");
                m.meta_updated_at_ms = at;
            }),
            Op::Trash {
                side,
                id,
                at,
                trashed,
            } => edit(&mut stores[side], id, |m| {
                m.is_trashed = trashed;
                m.meta_updated_at_ms = at;
            }),
        }
    }
    let [a, b] = stores;
    (a, b)
}

/// Applies an edit of asset `id`'s metadata through the merge, as a user's
/// edit arriving at the store would.
fn edit(store: &mut SimStore, id: u8, change: impl FnOnce(&mut crate::pb::AssetMeta)) {
    let hash = asset(u64::from(id), 40 + usize::from(id), 1).hash;
    let Some((_, mut meta)) = store.meta(hash) else {
        return;
    };
    change(&mut meta);
    let mut update = MetaUpdate::of(hash, &meta);
    update.created_at_ms = 0;
    let _ = store.apply_meta(&update);
}

fn summaries(store: &SimStore) -> Vec<Summary> {
    store.list()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn v1_converges_in_one_session_and_then_moves_nothing(ops in proptest::collection::vec(op(), 0..40), seed in 0u64..1000) {
        let (a, b) = build(&ops);
        let first = v1_tests::run_pair(a, b, Path::clean(), seed);
        prop_assert!(first.initiator.is_ok() && first.responder.is_ok());
        let (a, b) = first.stores;
        prop_assert_eq!(summaries(&a), summaries(&b));
        let second = v1_tests::run_pair(a, b, Path::clean(), seed + 1);
        for outcome in [second.initiator.unwrap(), second.responder.unwrap()] {
            let r = outcome.report;
            prop_assert_eq!((r.assets_sent, r.meta_sent), (0, 0));
        }
    }

    #[test]
    fn v2_converges_in_one_session_and_then_moves_nothing(ops in proptest::collection::vec(op(), 0..40), seed in 0u64..1000, coded in any::<bool>(), page in prop_oneof![Just(0usize), 1usize..6]) {
        let (a, b) = build(&ops);
        // Coded reconciliation or the full exchange (whole lists, or pages
        // of `page` summaries): the same result.
        let config = || crate::engine::EngineConfig {
            coded_recon: coded,
            paged_lists: page > 0,
            list_page: page.max(1),
            ..v2_tests::config(2)
        };
        let mut first = v2_tests::pair((a, b), (config(), config()), (false, false), Path::clean(), seed);
        first.run(seed);
        let _ = v2_tests::outcomes(&mut first);
        let (a, b) = (first.peers[0].store.clone(), first.peers[1].store.clone());
        prop_assert_eq!(summaries(&a), summaries(&b));
        let mut second = v2_tests::pair((a, b), (config(), config()), (false, false), Path::clean(), seed + 1);
        second.run(seed + 1);
        let (x, y) = v2_tests::outcomes(&mut second);
        for r in [x.report, y.report] {
            prop_assert_eq!((r.assets_sent, r.meta_sent), (0, 0));
        }
    }
}
