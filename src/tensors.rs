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

use std::collections::HashMap;

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

    /// Bytes per element of the dtype (1 for unknown or sub-byte types).
    pub fn width(&self) -> usize {
        match self.dtype.as_str() {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "BF16" | "F16" | "I16" | "U16" => 2,
            _ => 1,
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
        let header = prefix.get(8..8 + n as usize)?;
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
            let len = (cut - pos) as usize;
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
                .map(|t| (t.name.as_str(), t.start, t.end, t.width()))
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
        let ds = grid.layout().data_start as usize;
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
