//! Assets: their names, their metadata and the last-writer-wins
//! rule that lets every node converge on the same metadata.
//!
//! Everything here is pure: no IO, no clock (times are arguments). The stores,
//! the HTTP API and both protocols share these types, so a hash or a merge
//! means the same thing everywhere.
//!
//! - [`hash`]: [`AssetHash`], parsed once where a hash enters;
//! - [`meta`]: [`MetaVersion`], [`MetaUpdate`] and the LWW [`merge_meta`];
//! - [`stamp`]: how far ahead a metadata stamp may be, and a user's edit stamp;
//! - [`record`]: [`Summary`] and [`Bundle`], what stores list and move, and
//!   [`VerifiedBundle`], a bundle whose hash was checked.

pub mod hash;
pub mod meta;
pub mod record;
pub mod stamp;

pub use hash::{AssetHash, HashPrefix, MalformedHash};
pub use meta::{merge_meta, meta_text_bytes, MetaEdit, MetaUpdate, MetaVersion, MAX_META_BYTES};
pub use record::{Bundle, HashMismatch, Summary, VerifiedBundle};
pub use stamp::{check_stamp, edit_stamp, ClockBound, FutureStamp};
