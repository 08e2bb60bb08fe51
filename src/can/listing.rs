//! A store's listing in hash order, page by page, that goes on past
//! damage: `fsck` names it, `export` writes everything else, and a node's
//! sessions ([`page_past_damage`]) sync everything else.
//!
//! An embedded store fails a page that holds a record it cannot decode
//! ([`CanError::DamagedRecord`]), naming the asset. [`Listing`] then lists
//! one record at a time up to it, so the whole records before it in that
//! page are still listed, hands the damaged one on, and goes on after it
//! in whole pages again.
//!
//! A damaged page of the store's index ([`CanError::DamagedIndex`]) hides
//! the records on it: nothing names them. [`Listing`] then lists one record
//! at a time up to the page, looks for the first place in the key space
//! past it from which listing works again (stepping forward in doubling
//! steps, then halving the gap), and hands on the span between as
//! unreadable.

use crate::asset::{AssetHash, Summary};
use crate::can::{Can, CanError, Page};

/// What [`Listing::next`] gives.
pub enum Listed {
    /// The next summaries, in hash order.
    Page(Vec<Summary>),
    /// A record that does not decode; the listing goes on after it.
    Damaged {
        /// The asset whose record it is.
        hash: AssetHash,
        /// What does not decode.
        why: String,
    },
    /// The records past `after` (from the start when `None`) up to and
    /// including `upto` (to the end when `None`) cannot be read: a page
    /// of the index is damaged. The listing goes on after `upto`.
    Unreadable {
        /// Where the span starts: after this key, or at the start.
        after: Option<AssetHash>,
        /// Where it ends: this key included, or the end.
        upto: Option<AssetHash>,
        /// What the database library said.
        why: String,
    },
}

/// A span of the store's keys: the hashes after `after` (from the start
/// when `None`) up to `upto` (to the end when `None`).
pub struct Span {
    /// Where it starts: after this key, or at the start.
    pub after: Option<AssetHash>,
    /// Where it ends: this key included, or the end.
    pub upto: Option<AssetHash>,
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.after {
            Some(after) => write!(f, "the records after {after}")?,
            None => write!(f, "the records from the start")?,
        }
        match self.upto {
            Some(upto) => write!(f, " up to {upto}"),
            None => write!(f, " to the end"),
        }
    }
}

/// Halvings of the gap between a key past which listing fails and one past
/// which it works: after them the gap is a 2^48th of what it was, far
/// smaller than the share of the key space one record takes.
const HALVINGS: usize = 48;

/// The first step past a damaged index page, a 2^56th of the key space;
/// doubled until listing works again.
const FIRST_STEP: Key = Key(1 << 72, 0);

/// Where a listing is.
pub struct Listing {
    /// The last hash listed (or named damaged).
    after: Option<AssetHash>,
    /// Summaries asked for per page: `page_size`, or one while stepping up
    /// to a damaged record or a damaged page of the index.
    asking: usize,
    page_size: usize,
    /// The damaged record being stepped up to: once past it (mended
    /// meanwhile), whole pages again.
    stepping_to: Option<AssetHash>,
    done: bool,
}

impl Listing {
    /// A listing from the start, `page_size` summaries a page.
    pub fn new(page_size: usize) -> Self {
        Self::after(None, page_size)
    }

    /// A listing of the keys after `after` (from the start when `None`).
    pub fn after(after: Option<AssetHash>, page_size: usize) -> Self {
        Self {
            after,
            asking: page_size,
            page_size,
            stepping_to: None,
            done: false,
        }
    }

    /// Where it would go on from: after this key (from the start when
    /// `None`); `None` at its end.
    fn resumes_after(&self) -> Option<Option<AssetHash>> {
        (!self.done).then_some(self.after)
    }

    /// The next page, or the next damaged record; `None` at the end.
    pub async fn next(&mut self, can: &dyn Can) -> Result<Option<Listed>, CanError> {
        while !self.done {
            match can.list_page(self.after, self.asking).await {
                Ok(page) => {
                    match page.next {
                        // Keys come in order, so every page moves on: a
                        // store that says otherwise would list forever.
                        Some(next) if Some(next) <= self.after => {
                            return Err(CanError::Storage(format!(
                                "the store listed {next} after {}: out of order",
                                self.after.map_or(String::new(), |after| after.to_string())
                            )))
                        }
                        Some(next) => self.after = Some(next),
                        None => self.done = true,
                    }
                    if self.stepping_to.is_some_and(|to| self.after >= Some(to)) {
                        self.whole_pages();
                    }
                    return Ok(Some(Listed::Page(page.items)));
                }
                Err(CanError::DamagedRecord { hash, .. }) if self.asking > 1 => {
                    self.asking = 1;
                    self.stepping_to = Some(hash);
                }
                Err(CanError::DamagedRecord { hash, why }) => {
                    self.after = Some(hash);
                    self.whole_pages();
                    return Ok(Some(Listed::Damaged { hash, why }));
                }
                // As for a damaged record: the records before the damaged
                // page in the page asked for are still listed, one by one.
                Err(CanError::DamagedIndex { .. }) if self.asking > 1 => self.asking = 1,
                Err(CanError::DamagedIndex { why, .. }) => {
                    let after = self.after;
                    let upto = self.works_again_past(can, after).await?;
                    match upto {
                        Some(upto) => self.after = Some(upto),
                        None => self.done = true,
                    }
                    self.whole_pages();
                    return Ok(Some(Listed::Unreadable { after, upto, why }));
                }
                Err(err) => return Err(err),
            }
        }
        Ok(None)
    }

    fn whole_pages(&mut self) {
        self.asking = self.page_size;
        self.stepping_to = None;
    }

    /// The first key found past `after` after which listing works again;
    /// `None` when it works nowhere past it.
    async fn works_again_past(
        &self,
        can: &dyn Can,
        after: Option<AssetHash>,
    ) -> Result<Option<AssetHash>, CanError> {
        let lists_past = |key: Key| async move {
            match can.list_page(Some(key.hash()), 1).await {
                // A damaged record there is the listing's to name: the
                // index itself is readable past `key`.
                Ok(_) | Err(CanError::DamagedRecord { .. }) => Ok(true),
                Err(CanError::DamagedIndex { .. }) => Ok(false),
                Err(err) => Err(err),
            }
        };
        let base = after.map_or(Key(0, 0), Key::of);
        let (mut failing, mut step) = (base, FIRST_STEP);
        let mut works = loop {
            // Past the end of the key space, the last key is tried, so
            // that the records between it and the last failure are not
            // given up untried.
            let probe = base.plus(step).unwrap_or(Key::LAST);
            if lists_past(probe).await? {
                break probe;
            }
            if probe == Key::LAST {
                return Ok(None);
            }
            failing = probe;
            step = step.plus(step).unwrap_or(Key::LAST);
        };
        for _ in 0..HALVINGS {
            let middle = failing.midway_to(works);
            if middle == failing {
                break;
            }
            if lists_past(middle).await? {
                works = middle;
            } else {
                failing = middle;
            }
        }
        Ok(Some(works.hash()))
    }
}

/// A page as [`Can::list_page`] gives it, but with what is damaged left
/// out, for a node's sessions: damaged records and the records a damaged
/// page of the index hides. They sync every other asset; each piece left
/// out is said in the log, for fsck to name and a person to mend.
///
/// One listing fills the page, so stepping up to a damaged record costs
/// one pass, not one per call.
pub async fn page_past_damage(
    can: &dyn Can,
    after: Option<AssetHash>,
    limit: usize,
) -> Result<Page<Summary, AssetHash>, CanError> {
    let mut listing = Listing::after(after, limit);
    let mut items = Vec::with_capacity(limit.min(4096));
    while items.len() < limit {
        match listing.next(can).await? {
            None => break,
            Some(Listed::Page(page)) => items.extend(page),
            Some(Listed::Damaged { hash, why }) => {
                tracing::error!(
                    "the record of {hash} is damaged, so this node lists and syncs the \
                     other assets only; run `can-sync fsck`: {why}"
                );
            }
            Some(Listed::Unreadable { after, upto, why }) => {
                tracing::error!(
                    "a page of the store's index is damaged: {} cannot be read, so this \
                     node lists and syncs the other assets only; run `can-sync fsck`: {why}",
                    Span { after, upto }
                );
            }
        }
    }
    // The listing's pages may overshoot the page asked for: what is cut
    // off is listed again from the last summary kept.
    let next = if items.len() >= limit {
        items.truncate(limit);
        items.last().map(|summary| summary.hash)
    } else {
        listing.resumes_after().flatten()
    };
    Ok(Page { items, next })
}

/// Every summary of `can`, page by page, in hash order: a vector of the whole
/// store, for what needs one: protocol v1's `HASH_SET`, v2's full exchange
/// with a peer that does not page its lists, tests. What is damaged is
/// left out (and said in the log), as [`page_past_damage`] does.
pub async fn list_all(can: &dyn Can) -> Result<Vec<Summary>, CanError> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = page_past_damage(can, after, LIST_PAGE).await?;
        all.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(all),
        }
    }
}

/// Items per page when a caller reads a whole listing.
pub const LIST_PAGE: usize = 10_000;

/// A key of the store (a hash) as the 256-bit number it sorts as: the
/// high and the low 128 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key(u128, u128);

impl Key {
    const LAST: Self = Self(u128::MAX, u128::MAX);

    fn of(hash: AssetHash) -> Self {
        let bytes = hash.as_bytes();
        Self(
            u128::from_be_bytes(bytes[..16].try_into().expect("16 bytes")),
            u128::from_be_bytes(bytes[16..].try_into().expect("16 bytes")),
        )
    }

    fn hash(self) -> AssetHash {
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&self.0.to_be_bytes());
        bytes[16..].copy_from_slice(&self.1.to_be_bytes());
        AssetHash::from_bytes(bytes)
    }

    /// `self + other`, `None` past the last key.
    fn plus(self, other: Self) -> Option<Self> {
        let (low, carry) = self.1.overflowing_add(other.1);
        let high = self
            .0
            .checked_add(other.0)?
            .checked_add(u128::from(carry))?;
        Some(Self(high, low))
    }

    /// The key halfway from `self` to a larger `other`, rounded down.
    fn midway_to(self, other: Self) -> Self {
        let (low, borrow) = other.1.overflowing_sub(self.1);
        let gap = Self(other.0 - self.0 - u128::from(borrow), low);
        let half = Self(gap.0 >> 1, (gap.1 >> 1) | (gap.0 << 127));
        self.plus(half).expect("halfway to a key is a key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_and_add_as_the_numbers_they_are() {
        let a = Key(1, u128::MAX);
        assert_eq!(a.plus(Key(0, 1)), Some(Key(2, 0)), "carry");
        assert_eq!(Key(u128::MAX, u128::MAX).plus(Key(0, 1)), None);
        assert_eq!(Key(0, 0).midway_to(Key(1, 0)), Key(0, 1 << 127));
        assert_eq!(Key(0, 4).midway_to(Key(0, 7)), Key(0, 5));
        assert_eq!(Key(0, 4).midway_to(Key(0, 5)), Key(0, 4));
        let hash = AssetHash::of(b"x");
        assert_eq!(Key::of(hash).hash(), hash);
        let (x, y) = (AssetHash::of(b"x"), AssetHash::of(b"y"));
        assert_eq!(Key::of(x) < Key::of(y), x < y, "keys sort as hashes do");
    }
}
