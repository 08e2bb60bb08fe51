//! Windows of the asset table's key space, bounded at both ends, in which
//! [`read_page_by_hash`](super::schema::read_page_by_hash) lists it. redb
//! walks down to the leaf of a range's end before it yields anything, to
//! the last leaf for an open end, so one damaged leaf there would fail
//! every listing of the store; bounded, it fails only the windows that
//! reach it. Pure: tested without a database.

use std::ops::Bound;

use crate::asset::AssetHash;

/// A window of the asset table's key space, measured in the keys' first
/// eight bytes: hashes spread evenly there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    /// Where it starts: after this key, or at the very first.
    after: Option<[u8; 32]>,
    /// The first eight bytes of its last key; it ends with the last key
    /// that begins with them.
    last_prefix: u64,
    /// Prefixes it spans, doubled for each next window: a store whose
    /// count misleads (damaged, or emptied meanwhile) still reaches its
    /// end in at most 64 windows.
    width: u64,
}

impl Window {
    /// The window after `after` sized to hold `limit` of `held` keys twice
    /// over, so that most pages take one. No wider: a window that reaches a
    /// damaged page of the index fails whole, so one record asked for past
    /// the last healthy key before the page must not reach far.
    pub(super) fn first(after: Option<AssetHash>, limit: usize, held: u64) -> Self {
        let per_key = u64::MAX / held.max(1);
        let wanted = u64::try_from(limit)
            .unwrap_or(u64::MAX)
            .saturating_mul(2)
            .max(2);
        let width = per_key.saturating_mul(wanted);
        let after = after.map(|hash| *hash.as_bytes());
        Self {
            after,
            last_prefix: after.map_or(0, |key| prefix(&key)).saturating_add(width),
            width,
        }
    }

    /// The keys it spans: after its start, up to and including its last.
    pub(super) fn range(&self) -> (Bound<[u8; 32]>, Bound<[u8; 32]>) {
        let mut last = [0xff; 32];
        last[..8].copy_from_slice(&self.last_prefix.to_be_bytes());
        let start = self.after.map_or(Bound::Unbounded, Bound::Excluded);
        (start, Bound::Included(last))
    }

    /// The window after this one, twice as wide; `None` after the last key.
    pub(super) fn next(&self) -> Option<Self> {
        let after = self.range().1;
        let Bound::Included(after) = after else {
            unreachable!("a window ends with a key")
        };
        let first_prefix = self.last_prefix.checked_add(1)?;
        let width = self.width.saturating_mul(2);
        Some(Self {
            after: Some(after),
            last_prefix: first_prefix.saturating_add(width),
            width,
        })
    }
}

/// A key's first eight bytes, as the number they sort as.
fn prefix(key: &[u8; 32]) -> u64 {
    u64::from_be_bytes(key[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Windows follow one another without a gap and reach the last key in
    /// at most 64 steps, even when the store's count says it holds far more
    /// keys than it does.
    #[test]
    fn windows_tile_the_key_space() {
        for (after, held) in [
            (None, 0),
            (None, u64::MAX),
            (Some(AssetHash::from_bytes([0x80; 32])), 1 << 40),
            (Some(AssetHash::from_bytes([0xff; 32])), 3),
        ] {
            let mut window = Window::first(after, 1, held);
            assert_eq!(
                window.range().0,
                after.map_or(Bound::Unbounded, |a| Bound::Excluded(*a.as_bytes()))
            );
            let mut steps = 0;
            while let Some(next) = window.next() {
                assert_eq!(
                    next.range().0,
                    match window.range().1 {
                        Bound::Included(last) => Bound::Excluded(last),
                        _ => unreachable!(),
                    },
                    "each window starts right after the last"
                );
                window = next;
                steps += 1;
            }
            assert!(steps <= 64, "{steps} windows");
            assert_eq!(
                window.range().1,
                Bound::Included([0xff; 32]),
                "the last reaches the end"
            );
        }
    }
}
