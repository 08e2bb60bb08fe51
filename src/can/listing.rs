//! A store's listing in hash order, page by page, that goes on past
//! damaged records: `fsck` names them, `export` writes everything else.
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

use can_sync::asset::{AssetHash, Summary};
use can_sync::can::{Can, CanError};

/// What [`Listing::next`] gives.
pub(crate) enum Listed {
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
        after: Option<AssetHash>,
        upto: Option<AssetHash>,
        why: String,
    },
}

/// Keeps the panics of the store's database library to one line each,
/// said once: looking past a damaged page of the index makes it panic on
/// that page many times over (the store turns each into an error), and
/// the default hook would print each with a backtrace.
pub(crate) fn say_each_panic_once() {
    let said = std::sync::Mutex::new(std::collections::HashSet::new());
    std::panic::set_hook(Box::new(move |info| {
        let what = info.to_string();
        if said
            .lock()
            .map_or(true, |mut said| said.insert(what.clone()))
        {
            eprintln!("{what}");
        }
    }));
}

/// A span of the store's keys: the hashes after `after` (from the start
/// when `None`) up to `upto` (to the end when `None`).
pub(crate) struct Span {
    pub(crate) after: Option<AssetHash>,
    pub(crate) upto: Option<AssetHash>,
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
pub(crate) struct Listing {
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
    pub(crate) fn new(page_size: usize) -> Self {
        Self {
            after: None,
            asking: page_size,
            page_size,
            stepping_to: None,
            done: false,
        }
    }

    /// The next page, or the next damaged record; `None` at the end.
    pub(crate) async fn next(&mut self, can: &dyn Can) -> Result<Option<Listed>, CanError> {
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
