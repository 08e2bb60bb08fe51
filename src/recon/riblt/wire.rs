//! The wire form of a run of cells (see the parent module's docs): what is
//! sent, and the checks made on what arrives before anything is allocated.

use bytes::{Buf, BufMut};
use prost::encoding::{decode_varint, encode_varint};

use super::{Cell, Element, CELL_WIRE_MIN, ELEMENT_WORDS, NARROW_SUM_LEN, WIDE_SUM_LEN};

/// Why a peer's cells were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RibltError {
    /// The payload announces more cells than the receiver accepts.
    #[error("peer sent {count} cells; the limit is {limit}")]
    TooManyCells {
        /// Cells announced.
        count: u64,
        /// The receiver's ceiling.
        limit: usize,
    },
    /// The payload ends before the cells it announces.
    #[error("cell payload is incomplete: {needed} bytes needed, {available} present")]
    Truncated {
        /// Bytes the announced cells need at least.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The payload does not parse.
    #[error("malformed cell payload: {0}")]
    Malformed(&'static str),
}

pub(super) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Whether a word is a 48-bit value sign-extended to 64 bits.
fn fits48(w: u64) -> bool {
    (((w << 16) as i64) >> 16) as u64 == w
}

/// Whether a cell's sum needs the wide form.
fn is_wide(cell: &Cell) -> bool {
    !cell.sum.0[4..7].iter().all(|&w| fits48(w))
}

/// Encodes a run of consecutive cells (see the module docs for the format).
pub fn encode_cells(cells: &[Cell]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(10 + cells.len().div_ceil(8) + cells.len() * (CELL_WIRE_MIN + 2));
    encode_varint(cells.len() as u64, &mut out);
    let mut bitmap = vec![0u8; cells.len().div_ceil(8)];
    for (i, cell) in cells.iter().enumerate() {
        if is_wide(cell) {
            bitmap[i / 8] |= 1 << (i % 8);
        }
    }
    out.put_slice(&bitmap);
    for (i, cell) in cells.iter().enumerate() {
        let wide = bitmap[i / 8] & (1 << (i % 8)) != 0;
        encode_varint(zigzag(cell.count), &mut out);
        out.put_u64_le(cell.checksum);
        for w in &cell.sum.0[..4] {
            out.put_u64_le(*w);
        }
        for w in &cell.sum.0[4..7] {
            if wide {
                out.put_u64_le(*w);
            } else {
                out.put_slice(&w.to_le_bytes()[..6]);
            }
        }
        for w in &cell.sum.0[7..] {
            out.put_u64_le(*w);
        }
    }
    out
}

/// Decodes what [`encode_cells`] produced, accepting at most `max_cells`.
///
/// The count is checked against `max_cells` and against the bytes present
/// (at least [`CELL_WIRE_MIN`] per cell) before anything is allocated.
pub fn decode_cells(payload: &[u8], max_cells: usize) -> Result<Vec<Cell>, RibltError> {
    let mut buf = payload;
    let cells = read_cells(&mut buf, max_cells)?;
    if buf.has_remaining() {
        return Err(RibltError::Malformed("trailing bytes after the cells"));
    }
    Ok(cells)
}

/// Reads one run of cells from the front of `buf`, as [`decode_cells`] does,
/// leaving what follows.
pub(super) fn read_cells(buf: &mut &[u8], max_cells: usize) -> Result<Vec<Cell>, RibltError> {
    let count = decode_varint(buf).map_err(|_| RibltError::Malformed("bad cell count"))?;
    if count > max_cells as u64 {
        return Err(RibltError::TooManyCells {
            count,
            limit: max_cells,
        });
    }
    let n = count as usize;
    let bitmap_len = n.div_ceil(8);
    let needed = n.saturating_mul(CELL_WIRE_MIN).saturating_add(bitmap_len);
    if buf.remaining() < needed {
        return Err(RibltError::Truncated {
            needed,
            available: buf.remaining(),
        });
    }
    let (bitmap, rest) = buf.split_at(bitmap_len);
    *buf = rest;
    if !n.is_multiple_of(8) && bitmap[bitmap_len - 1] >> (n % 8) != 0 {
        return Err(RibltError::Malformed("wide flag set past the last cell"));
    }
    let mut cells = Vec::with_capacity(n);
    for i in 0..n {
        let wide = bitmap[i / 8] & (1 << (i % 8)) != 0;
        let count = decode_varint(buf).map_err(|_| RibltError::Malformed("bad count"))?;
        let sum_len = if wide { WIDE_SUM_LEN } else { NARROW_SUM_LEN };
        let needed = 8 + sum_len;
        if buf.remaining() < needed {
            return Err(RibltError::Truncated {
                needed,
                available: buf.remaining(),
            });
        }
        let checksum = buf.get_u64_le();
        let mut words = [0u64; ELEMENT_WORDS];
        for w in &mut words[..4] {
            *w = buf.get_u64_le();
        }
        for w in &mut words[4..7] {
            *w = if wide {
                buf.get_u64_le()
            } else {
                let v = buf.get_uint_le(6);
                (((v << 16) as i64) >> 16) as u64
            };
        }
        for w in &mut words[7..] {
            *w = buf.get_u64_le();
        }
        cells.push(Cell {
            sum: Element(words),
            checksum,
            count: unzigzag(count),
        });
    }
    Ok(cells)
}
