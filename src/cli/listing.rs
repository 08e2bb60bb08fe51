//! A store's listing in hash order, page by page, that goes on past
//! damaged records: `fsck` names them, `export` writes everything else.
//!
//! An embedded store fails a page that holds a record it cannot decode
//! ([`CanError::DamagedRecord`]), naming the asset. [`Listing`] then lists
//! one record at a time up to it, so the whole records before it in that
//! page are still listed, hands the damaged one on, and goes on after it
//! in whole pages again.

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
}

/// Where a listing is.
pub(crate) struct Listing {
    /// The last hash listed (or named damaged).
    after: Option<AssetHash>,
    /// Summaries asked for per page: `page_size`, or one while stepping up
    /// to a damaged record.
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
                Err(err) => return Err(err),
            }
        }
        Ok(None)
    }

    fn whole_pages(&mut self) {
        self.asking = self.page_size;
        self.stepping_to = None;
    }
}
