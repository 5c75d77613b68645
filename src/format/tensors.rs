//! Tensor files: where the tensors of a safetensors file lie, and a chunk grid aligned to them.
//! No I/O here.
//!
//! Content-defined chunking finds nothing to align in checkpoints of a training run, where
//! every float changes between versions. Cutting each tensor into fixed pieces from its own
//! start instead makes piece k of tensor "layers.3.weight" the same slice of the model in every
//! version, whatever the header length or tensor order: the piece to store a delta against
//! (`delta.rs`) is then found by tensor name and offset. Identical pieces (frozen tensors, a
//! copied file, the same tensors re-serialized) are still identical chunks and dedup as before.
//!
//! safetensors: `u64le n`, then `n` bytes of JSON `{"name": {"dtype": "F32", "shape": [..],
//! "data_offsets": [begin, end]}, ..., "__metadata__": {..}}`, then the data; offsets are
//! relative to the end of the header.
//!
//! PyTorch (`torch.save`): a zip archive whose entries are stored uncompressed, one per tensor
//! storage (`archive/data/0`, `archive/data/1`, ...) beside the pickle; the layout comes from the
//! central directory at the end (zip64 too), so it needs a seekable source. The entries' names,
//! without the folder all of them share (`torch.save` names it after the file), play the
//! tensors' names; their dtype is unknown (`""`).
//!
//! Nothing here does file I/O of its own; `Layout::zip` reads through the reader it is given.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use crate::format::usize_from;

/// One tensor: absolute byte range in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub name: String,
    pub dtype: String,
    pub start: u64,
    pub end: u64,
}

impl Tensor {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Bytes per element of the dtype (1 for byte and sub-byte types), `None` if the dtype is
    /// not known (zip entries).
    pub fn width(&self) -> Option<usize> {
        match self.dtype.as_str() {
            "" => None,
            "F64" | "I64" | "U64" => Some(8),
            "F32" | "I32" | "U32" => Some(4),
            "BF16" | "F16" | "I16" | "U16" => Some(2),
            _ => Some(1),
        }
    }
}

/// The tensors of a file, sorted by start, non-overlapping, all after the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Where the header ends and the data begins.
    pub data_start: u64,
    pub tensors: Vec<Tensor>,
}

/// Headers longer than this are not looked at (the grid must be known from the first window).
pub const MAX_HEADER: u64 = 4 << 20;

impl Layout {
    /// The layout of a safetensors file from its first bytes (`prefix` holds at least the whole
    /// header), or `None` if it is not one. Nothing in `prefix` is trusted: lengths, offsets
    /// and JSON are checked.
    pub fn safetensors(prefix: &[u8]) -> Option<Layout> {
        let n = u64::from_le_bytes(prefix.get(..8)?.try_into().ok()?);
        if !(2..=MAX_HEADER).contains(&n) {
            return None;
        }
        let header = prefix.get(8..8 + usize_from(n))?;
        if header.first() != Some(&b'{') {
            return None;
        }
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(header).ok()?;
        let data_start = 8 + n;
        let mut tensors = Vec::with_capacity(map.len());
        for (name, v) in map {
            if name == "__metadata__" {
                continue;
            }
            let dtype = v.get("dtype")?.as_str()?.to_string();
            let off = v.get("data_offsets")?.as_array()?;
            let (a, b) = match off.as_slice() {
                [a, b] => (a.as_u64()?, b.as_u64()?),
                _ => return None,
            };
            if a > b {
                return None;
            }
            tensors.push(Tensor {
                name,
                dtype,
                start: data_start.checked_add(a)?,
                end: data_start.checked_add(b)?,
            });
        }
        tensors.sort_by_key(|t| (t.start, t.end));
        if tensors.windows(2).any(|w| w[0].end > w[1].start) {
            return None;
        }
        Some(Layout {
            data_start,
            tensors,
        })
    }

    /// The stored (uncompressed) entries of the zip archive `r` of `len` bytes, or `None` if
    /// it is not a zip archive with a sound central directory. Compressed entries, directories
    /// and empty entries are left out (they are cut like gaps).
    pub fn zip<R: Read + Seek>(r: &mut R, len: u64) -> Option<Layout> {
        let mut read_at = |at: u64, n: usize| -> Option<Vec<u8>> {
            let end = at.checked_add(n as u64)?;
            if end > len {
                return None;
            }
            r.seek(SeekFrom::Start(at)).ok()?;
            let mut b = vec![0u8; n];
            r.read_exact(&mut b).ok()?;
            Some(b)
        };
        let u16_at = |b: &[u8], i: usize| u64::from(u16::from_le_bytes([b[i], b[i + 1]]));
        let u32_at =
            |b: &[u8], i: usize| u64::from(u32::from_le_bytes(b[i..i + 4].try_into().unwrap()));
        let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        // End of central directory: the last "PK\5\6" whose comment reaches exactly the end.
        let tail_len = len.min(22 + 0xffff) as usize;
        let tail = read_at(len - tail_len as u64, tail_len)?;
        let eocd = (0..=tail_len.checked_sub(22)?).rev().find(|&i| {
            tail[i..i + 4] == *b"PK\x05\x06"
                && i + 22 + usize_from(u16_at(&tail, i + 20)) == tail_len
        })?;
        let e = &tail[eocd..];
        let eocd_at = len - (tail_len - eocd) as u64;
        let (mut count, mut cd_size, mut cd_at) = (u16_at(e, 10), u32_at(e, 12), u32_at(e, 16));
        if count == 0xffff || cd_size == 0xffff_ffff || cd_at == 0xffff_ffff {
            let loc = read_at(eocd_at.checked_sub(20)?, 20)?;
            if loc[..4] != *b"PK\x06\x07" {
                return None;
            }
            let z = read_at(u64_at(&loc, 8), 56)?;
            if z[..4] != *b"PK\x06\x06" {
                return None;
            }
            (count, cd_size, cd_at) = (u64_at(&z, 32), u64_at(&z, 40), u64_at(&z, 48));
        }
        // One 46-byte record per entry at least; a bound on what the directory may cost.
        if cd_size > 256 << 20 || count > cd_size / 46 || cd_at.checked_add(cd_size)? > len {
            return None;
        }
        let cd = read_at(cd_at, usize_from(cd_size))?;
        let mut tensors = Vec::new();
        let mut p = 0usize;
        for _ in 0..count {
            let h = cd.get(p..p + 46)?;
            if h[..4] != *b"PK\x01\x02" {
                return None;
            }
            let (method, flags) = (u16_at(h, 10), u16_at(h, 8));
            let (mut csize, mut usize_) = (u32_at(h, 20), u32_at(h, 24));
            let (n, x, c) = (
                usize_from(u16_at(h, 28)),
                usize_from(u16_at(h, 30)),
                usize_from(u16_at(h, 32)),
            );
            let mut local = u32_at(h, 42);
            let name = std::str::from_utf8(cd.get(p + 46..p + 46 + n)?)
                .ok()?
                .to_string();
            let mut extra = cd.get(p + 46 + n..p + 46 + n + x)?;
            p += 46 + n + x + c;
            // zip64 extended information: the fields that overflowed, in this order.
            while extra.len() >= 4 {
                let (id, size) = (u16_at(extra, 0), usize_from(u16_at(extra, 2)));
                let body = extra.get(4..4 + size)?;
                if id == 1 {
                    let mut f = body.chunks_exact(8).map(|b| u64_at(b, 0));
                    if usize_ == 0xffff_ffff {
                        usize_ = f.next()?;
                    }
                    if csize == 0xffff_ffff {
                        csize = f.next()?;
                    }
                    if local == 0xffff_ffff {
                        local = f.next()?;
                    }
                }
                extra = &extra[4 + size..];
            }
            // Stored, not encrypted, not empty.
            if method != 0 || flags & 1 != 0 || csize != usize_ || csize == 0 {
                continue;
            }
            let lh = read_at(local, 30)?;
            if lh[..4] != *b"PK\x03\x04" {
                return None;
            }
            let start = local + 30 + u16_at(&lh, 26) + u16_at(&lh, 28);
            let end = start.checked_add(csize)?;
            if end > cd_at {
                return None;
            }
            tensors.push(Tensor {
                name,
                dtype: String::new(),
                start,
                end,
            });
        }
        tensors.sort_by_key(|t| (t.start, t.end));
        if tensors.windows(2).any(|w| w[0].end > w[1].start) {
            return None;
        }
        // `torch.save` puts every entry in a folder named after the file it wrote
        // (`epoch_3/data/0`): without that folder, the tensors of the next checkpoint, saved
        // under another name, are found by name.
        let root = tensors
            .first()
            .and_then(|t| t.name.split_once('/'))
            .map(|(r, _)| format!("{r}/"));
        if let Some(root) = root
            && tensors.iter().all(|t| t.name.starts_with(&root))
        {
            for t in &mut tensors {
                t.name.drain(..root.len());
            }
        }
        Some(Layout {
            data_start: 0,
            tensors,
        })
    }

    pub fn by_name(&self) -> HashMap<&str, usize> {
        self.tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect()
    }
}

/// Where a piece lies: `(tensor index, offset from the tensor's start)`.
pub type Place = (usize, u64);

/// Cuts a stream into pieces of at most `piece` bytes: the header, each gap between tensors
/// and each tensor are cut from their own start; after the last tensor, from its end.
pub struct Grid {
    layout: Layout,
    piece: u64,
    /// Sorted segment starts, with the tensor that starts a segment (if one does).
    bounds: Vec<(u64, Option<usize>)>,
}

impl Grid {
    pub fn new(layout: Layout, piece: usize) -> Grid {
        let mut bounds: Vec<(u64, Option<usize>)> = vec![(0, None), (layout.data_start, None)];
        for (i, t) in layout.tensors.iter().enumerate() {
            if !t.is_empty() {
                bounds.push((t.start, Some(i)));
                bounds.push((t.end, None));
            }
        }
        // A tensor start wins over a segment end at the same offset.
        bounds.sort_by_key(|(at, t)| (*at, t.is_none()));
        bounds.dedup_by_key(|(at, _)| *at);
        Grid {
            layout,
            piece: piece.max(1) as u64,
            bounds,
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The next cut after absolute offset `pos`, and where the piece starting at `pos` lies.
    fn next(&self, pos: u64) -> (u64, Option<Place>) {
        let i = self.bounds.partition_point(|(at, _)| *at <= pos) - 1;
        let (seg, tensor) = self.bounds[i];
        let seg_end = self.bounds.get(i + 1).map_or(u64::MAX, |b| b.0);
        let k = (pos - seg) / self.piece;
        let cut = (seg + (k + 1) * self.piece).min(seg_end);
        (cut, tensor.map(|t| (t, pos - seg)))
    }

    /// Cut `window` (which starts at absolute offset `at`): push `(length, place)` for every
    /// whole piece in it (the last, short one too when `eof`) and return the bytes used.
    pub fn cuts(
        &self,
        at: u64,
        window: &[u8],
        eof: bool,
        out: &mut Vec<(usize, Option<Place>)>,
    ) -> usize {
        let mut used = 0usize;
        while used < window.len() {
            let pos = at + used as u64;
            let (cut, place) = self.next(pos);
            let len = usize_from(cut - pos);
            if used + len > window.len() {
                if !eof {
                    break;
                }
                out.push((window.len() - used, place));
                used = window.len();
                break;
            }
            out.push((len, place));
            used += len;
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.resize(v.len() + data_len, 7);
        v
    }

    #[test]
    fn parses_safetensors_and_refuses_everything_else() {
        let h = r#"{"b":{"dtype":"BF16","shape":[10],"data_offsets":[20,40]},"a":{"dtype":"F32","shape":[5],"data_offsets":[0,20]},"__metadata__":{"format":"pt"}}"#;
        let f = file(h, 40);
        let l = Layout::safetensors(&f).unwrap();
        let ds = 8 + h.len() as u64;
        assert_eq!(l.data_start, ds);
        assert_eq!(
            l.tensors
                .iter()
                .map(|t| (t.name.as_str(), t.start, t.end, t.width().unwrap()))
                .collect::<Vec<_>>(),
            vec![("a", ds, ds + 20, 4), ("b", ds + 20, ds + 40, 2)]
        );
        assert!(Layout::safetensors(&f[..20]).is_none(), "header cut short");
        assert!(Layout::safetensors(b"PK\x03\x04 a zip file, not safetensors").is_none());
        assert!(Layout::safetensors(&file("{\"a\":1}", 0)).is_none());
        let overlap = r#"{"a":{"dtype":"F32","data_offsets":[0,20]},"b":{"dtype":"F32","data_offsets":[10,30]}}"#;
        assert!(Layout::safetensors(&file(overlap, 30)).is_none());
        let backwards = r#"{"a":{"dtype":"F32","data_offsets":[20,0]}}"#;
        assert!(Layout::safetensors(&file(backwards, 30)).is_none());
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(Layout::safetensors(&huge).is_none());
    }

    #[test]
    fn grid_cuts_each_tensor_from_its_own_start_in_any_window() {
        let h = r#"{"a":{"dtype":"F32","data_offsets":[0,1000]},"b":{"dtype":"F32","data_offsets":[1000,1250]},"__metadata__":{"step":"100"}}"#;
        let f = file(h, 1250 + 77);
        let grid = Grid::new(Layout::safetensors(&f).unwrap(), 300);
        let ds = usize_from(grid.layout().data_start);
        // Whole file at once.
        let mut all = Vec::new();
        assert_eq!(grid.cuts(0, &f, true, &mut all), f.len());
        let lens: Vec<usize> = all.iter().map(|c| c.0).collect();
        assert_eq!(lens.iter().sum::<usize>(), f.len());
        let places: Vec<Option<Place>> = all.iter().map(|c| c.1).collect();
        let header_pieces = ds.div_ceil(300);
        assert_eq!(
            &places[header_pieces..],
            &[
                Some((0, 0)),
                Some((0, 300)),
                Some((0, 600)),
                Some((0, 900)),
                Some((1, 0)),
                None
            ]
        );
        assert_eq!(
            &lens[header_pieces..],
            &[300, 300, 300, 100, 250, 77],
            "tensor a ends a piece early; the tail after the last tensor is its own piece"
        );
        // The same cuts in windows of every size, carrying the unused tail as ingest does.
        for w in [1usize, 7, 299, 300, 301, 1000] {
            let mut got = Vec::new();
            let mut at = 0usize;
            let mut carry_from = 0usize;
            while carry_from < f.len() {
                let end = (carry_from + w.max(300)).min(f.len());
                let eof = end == f.len();
                let used = grid.cuts(at as u64, &f[carry_from..end], eof, &mut got);
                at += used;
                carry_from += used;
                assert!(used > 0 || !eof);
            }
            assert_eq!(got, all, "window {w}");
        }
    }
}
