//! A byte-oriented Huffman coder for byte planes (see `codec.rs`). No I/O here.
//!
//! The sign/exponent plane of float weights has 2-4 bits of entropy per byte and no repeats
//! worth finding, so a plain order-0 Huffman code gets what zstd gets on it, without a match
//! search or a frame. Codes are at most 11 bits long, so one 64-bit load feeds five lookups; a
//! plane is cut into four streams decoded in one interleaved loop, which keeps the table lookups
//! of the four independent of each other. Planes of short codes (at most 5 bits per value on
//! average) and of at least 8 KiB are decoded with a table whose entries hold every code their
//! window begins with, up to three values per lookup.
//!
//! ```text
//! coded plane of n bytes:
//!   lengths:[128]     code length of each byte value, a nibble each (value 2i in the low
//!                     nibble of byte i, 2i+1 in the high); 0: the value does not occur; 1..=11
//!   bits:[4 x u32le]  the exact bit count of each of the four streams
//!   streams           stream k in ceil(bits_k / 8) bytes, one after the other
//! ```
//! Stream k (k < 3) codes plane bytes `k*q .. (k+1)*q` with `q = n / 4`; stream 3 the rest.
//! Codes are canonical (shorter codes first, equal lengths in byte-value order) and written
//! least significant bit first; the last byte of a stream is padded with zero bits. The lengths
//! must satisfy Kraft's inequality (an incomplete code is allowed, but bits that match none of
//! its codes are an error).

/// The longest code.
pub const MAX_LEN: u32 = 11;
const TABLE_LEN: usize = 1 << MAX_LEN;
const STREAMS: usize = 4;
/// Header: code lengths and stream bit counts.
pub const HEADER_LEN: usize = 128 + 4 * STREAMS;

/// Byte counts of `data` (four partial histograms, so repeated values do not wait on each
/// other's increments).
pub fn histogram(data: &[u8]) -> [u32; 256] {
    let mut h = [[0u32; 256]; 4];
    let mut quads = data.chunks_exact(4);
    for q in &mut quads {
        h[0][q[0] as usize] += 1;
        h[1][q[1] as usize] += 1;
        h[2][q[2] as usize] += 1;
        h[3][q[3] as usize] += 1;
    }
    for &b in quads.remainder() {
        h[0][b as usize] += 1;
    }
    let mut out = h[0];
    for part in &h[1..] {
        for (o, c) in out.iter_mut().zip(part) {
            *o += c;
        }
    }
    out
}

/// Code lengths (at most `MAX_LEN`) of a Huffman code for the counts `hist`. Values that do not
/// occur get 0; when only one value occurs it gets length 1.
pub fn code_lengths(hist: &[u32; 256]) -> [u8; 256] {
    let mut lens = [0u8; 256];
    let mut leaves: Vec<(u64, u8)> = (0..=255u8)
        .filter(|&s| hist[s as usize] > 0)
        .map(|s| (u64::from(hist[s as usize]), s))
        .collect();
    match leaves.len() {
        0 => return lens,
        1 => {
            lens[leaves[0].1 as usize] = 1;
            return lens;
        }
        _ => {}
    }
    leaves.sort_unstable();
    let m = leaves.len();
    // Two queues: the sorted leaves (nodes 0..m) and the internal nodes (m..2m-1), which are
    // made in non-decreasing weight order.
    let mut weight: Vec<u64> = leaves.iter().map(|l| l.0).collect();
    weight.resize(2 * m - 1, 0);
    let mut parent = vec![0usize; 2 * m - 1];
    let (mut next_leaf, mut next_node) = (0usize, m);
    for j in m..2 * m - 1 {
        let mut take = || {
            let leaf_first =
                next_leaf < m && (next_node >= j || weight[next_leaf] <= weight[next_node]);
            if leaf_first {
                next_leaf += 1;
                next_leaf - 1
            } else {
                next_node += 1;
                next_node - 1
            }
        };
        let (a, b) = (take(), take());
        weight[j] = weight[a] + weight[b];
        parent[a] = j;
        parent[b] = j;
    }
    let mut depth = vec![0u32; 2 * m - 1];
    for j in (0..2 * m - 2).rev() {
        depth[j] = depth[parent[j]] + 1;
    }
    // Lengths over the limit become the limit; then the code is made to fit again (Kraft sum
    // back to at most 1) by lengthening the least frequent of the shorter codes, longest
    // first, which costs the fewest bits.
    let mut kraft: u64 = 0;
    for (i, &(_, s)) in leaves.iter().enumerate() {
        let l = depth[i].min(MAX_LEN);
        lens[s as usize] = l as u8;
        kraft += 1 << (MAX_LEN - l);
    }
    'fit: while kraft > TABLE_LEN as u64 {
        for l in (1..MAX_LEN).rev() {
            for &(_, s) in &leaves {
                if u32::from(lens[s as usize]) == l {
                    lens[s as usize] += 1;
                    kraft -= 1 << (MAX_LEN - l - 1);
                    if kraft <= TABLE_LEN as u64 {
                        break 'fit;
                    }
                }
            }
        }
    }
    lens
}

/// Canonical codes for `lens`, bit-reversed for writing least significant bit first. `None`
/// when the lengths break Kraft's inequality or exceed `MAX_LEN`.
fn canonical_codes(lens: &[u8; 256]) -> Option<[u16; 256]> {
    let mut count = [0u32; MAX_LEN as usize + 1];
    for &l in lens {
        if u32::from(l) > MAX_LEN {
            return None;
        }
        count[l as usize] += 1;
    }
    count[0] = 0;
    let kraft: u64 = (1..=MAX_LEN as usize)
        .map(|l| u64::from(count[l]) << (MAX_LEN as usize - l))
        .sum();
    if kraft > TABLE_LEN as u64 {
        return None;
    }
    let mut next = [0u32; MAX_LEN as usize + 2];
    let mut code = 0u32;
    for l in 1..=MAX_LEN as usize {
        code = (code + count[l - 1]) << 1;
        next[l] = code;
    }
    let mut codes = [0u16; 256];
    for s in 0..256 {
        let l = lens[s] as usize;
        if l > 0 {
            let c = next[l];
            next[l] += 1;
            codes[s] = u16::try_from(c.reverse_bits() >> (32 - l)).expect("l <= MAX_LEN bits");
        }
    }
    Some(codes)
}

/// The size in bytes `encode` would produce for a plane with counts `hist` and code `lens`.
pub fn coded_len(hist: &[u32; 256], lens: &[u8; 256]) -> usize {
    let bits: u64 = hist
        .iter()
        .zip(lens)
        .map(|(&c, &l)| u64::from(c) * u64::from(l))
        .sum();
    // Four streams, each padded to a whole byte.
    HEADER_LEN + crate::format::usize_from(bits / 8) + STREAMS
}

/// The plane ranges of the four streams of an `n`-byte plane.
fn stream_ranges(n: usize) -> [std::ops::Range<usize>; STREAMS] {
    let q = n / STREAMS;
    [0..q, q..2 * q, 2 * q..3 * q, 3 * q..n]
}

/// Append the coded form of `data` (whose counts are `hist`) with code `lens` to `out`.
pub fn encode(data: &[u8], hist: &[u32; 256], lens: &[u8; 256], out: &mut Vec<u8>) {
    let codes = canonical_codes(lens).expect("code_lengths makes a valid code");
    // A symbol's code and length in one word: code in the low 16 bits, length above.
    let mut table = [0u32; 256];
    for s in 0..256 {
        table[s] = u32::from(codes[s]) | (u32::from(lens[s]) << 16);
    }
    debug_assert!((0..256).all(|s| hist[s] == 0 || lens[s] > 0));
    for pair in lens.chunks_exact(2) {
        out.push(pair[0] | (pair[1] << 4));
    }
    let bits_at = out.len();
    out.resize(bits_at + 4 * STREAMS, 0);
    for (k, range) in stream_ranges(data.len()).into_iter().enumerate() {
        let bits = encode_stream(&data[range], &table, out);
        let bits = u32::try_from(bits).expect("a plane is far below 512 MiB");
        out[bits_at + 4 * k..bits_at + 4 * k + 4].copy_from_slice(&bits.to_le_bytes());
    }
}

/// Append one stream; returns its length in bits.
fn encode_stream(src: &[u8], table: &[u32; 256], out: &mut Vec<u8>) -> u64 {
    let start = out.len();
    // Room for every code at the longest length, and one whole 8-byte store past the end.
    out.resize(start + src.len() * MAX_LEN as usize / 8 + 16, 0);
    let buf = &mut out[start..];
    let (mut pos, mut acc, mut n) = (0usize, 0u64, 0u32);
    let put = |acc: &mut u64, n: &mut u32, s: u8| {
        let e = table[s as usize];
        *acc |= u64::from(e & 0xffff) << *n;
        *n += e >> 16;
    };
    let mut quads = src.chunks_exact(4);
    for q in &mut quads {
        // At most 7 + 4 * 11 = 51 bits are pending before the flush.
        for &s in q {
            put(&mut acc, &mut n, s);
        }
        buf[pos..pos + 8].copy_from_slice(&acc.to_le_bytes());
        let whole = (n / 8) as usize;
        pos += whole;
        acc >>= whole * 8;
        n &= 7;
    }
    for &s in quads.remainder() {
        put(&mut acc, &mut n, s);
    }
    buf[pos..pos + 8].copy_from_slice(&acc.to_le_bytes());
    let bits = pos as u64 * 8 + u64::from(n);
    out.truncate(start + crate::format::usize_from(bits.div_ceil(8)));
    bits
}

/// Why a coded plane cannot be decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct Damaged(pub &'static str);

/// The decoding table, indexed by the next `MAX_LEN` bits of a stream. An entry holds the
/// values of the codes the window begins with (one, or with `multi` up to three whose codes
/// fit in the window together):
///
/// ```text
/// byte 0: bits they use (bits 0-3), 0 (bits 4-5), how many (bits 6-7); bytes 1-3: the values
/// ```
/// so that the entry itself is the shift that consumes them (shifts use the low six bits).
/// Windows no code reaches get `UNASSIGNED`.
fn decode_table(lens: &[u8; 256], multi: bool) -> Result<Box<[u32; TABLE_LEN]>, Damaged> {
    let codes = canonical_codes(lens).ok_or(Damaged("invalid code lengths"))?;
    let mut table = Box::new([UNASSIGNED; TABLE_LEN]);
    for s in 0..256u32 {
        let l = u32::from(lens[s as usize]);
        if l == 0 {
            continue;
        }
        let entry = l | 1 << 6 | s << 8;
        let mut i = codes[s as usize] as usize;
        while i < TABLE_LEN {
            table[i] = entry;
            i += 1 << l;
        }
    }
    if multi {
        // Window w begins with the code of single[w]; its rest, w >> l, is read as a window
        // of its own, whose first code counts when it fits in the bits that are really known.
        // An `UNASSIGNED` entry's length field (15) never fits, so those windows stay as they
        // are. Branch-free: the three candidates are computed and one is picked.
        let single: [u32; TABLE_LEN] = *table;
        for (w, slot) in table.iter_mut().enumerate() {
            let e1 = single[w];
            let u1 = e1 & 15;
            let e2 = single[w >> u1];
            let u2 = u1 + (e2 & 15);
            let e3 = single[w >> u2];
            let u3 = u2 + (e3 & 15);
            let two = u2 | 2 << 6 | (e1 >> 8 & 0xff) << 8 | (e2 >> 8 & 0xff) << 16;
            let three = (two & !(3 << 6 | 15)) | u3 | 3 << 6 | (e3 >> 8 & 0xff) << 24;
            *slot = if u3 <= MAX_LEN {
                three
            } else if u2 <= MAX_LEN {
                two
            } else {
                e1
            };
        }
    }
    Ok(table)
}

/// The table entry of windows no code reaches: no values, and a shift of 63 bits, more than
/// any five codes use.
const UNASSIGNED: u32 = 63;

/// Planes whose codes average at most this many bits per value are decoded with a table of
/// several values per entry (more work to build, fewer lookups)...
const MULTI_MAX_BITS: u64 = 5;
/// ...when they are at least this long: building that table costs about as much as decoding
/// 8 KiB with the one-value table.
const MULTI_MIN_LEN: usize = 8 << 10;

/// The table index of the next code in `w`: its low `MAX_LEN` bits.
#[allow(
    clippy::cast_possible_truncation,
    reason = "the value is masked to MAX_LEN bits first"
)]
fn window(w: u64) -> usize {
    (w & (TABLE_LEN as u64 - 1)) as usize
}

/// Decode a coded plane (all of `stored`) into `out`, whose length is the plane's.
pub fn decode(stored: &[u8], out: &mut [u8]) -> Result<(), Damaged> {
    if stored.len() < HEADER_LEN {
        return Err(Damaged("truncated header"));
    }
    let mut lens = [0u8; 256];
    for (i, &b) in stored[..128].iter().enumerate() {
        lens[2 * i] = b & 15;
        lens[2 * i + 1] = b >> 4;
    }
    let mut streams: [&[u8]; STREAMS] = [&[]; STREAMS];
    let mut bits = [0u64; STREAMS];
    let mut pos = HEADER_LEN;
    for k in 0..STREAMS {
        let b = u32::from_le_bytes(stored[128 + 4 * k..132 + 4 * k].try_into().expect("4"));
        bits[k] = u64::from(b);
        let len = b.div_ceil(8) as usize;
        streams[k] = stored
            .get(pos..pos + len)
            .ok_or(Damaged("truncated stream"))?;
        pos += len;
    }
    if pos != stored.len() {
        return Err(Damaged("bytes after the last stream"));
    }
    let n = out.len();
    let total: u64 = bits.iter().sum();
    let multi = n >= MULTI_MIN_LEN && total <= n as u64 * MULTI_MAX_BITS;
    let table = decode_table(&lens, multi)?;
    let ranges = stream_ranges(n);
    // Four disjoint output slices.
    let (o0, rest) = out.split_at_mut(ranges[0].end);
    let (o1, rest) = rest.split_at_mut(ranges[1].len());
    let (o2, o3) = rest.split_at_mut(ranges[2].len());
    let mut outs = [o0, o1, o2, o3];
    let mut bit = [0usize; STREAMS];
    let done = interleaved(&table, multi, &streams, &mut outs, &mut bit)?;
    // Each stream's rest, one value at a time with zero-padded loads.
    for k in 0..STREAMS {
        let s = streams[k];
        for slot in &mut outs[k][done[k]..] {
            let at = (bit[k] >> 3).min(s.len());
            let mut word = [0u8; 8];
            let avail = (s.len() - at).min(8);
            word[..avail].copy_from_slice(&s[at..at + avail]);
            let w = u64::from_le_bytes(word) >> (bit[k] & 7);
            let e = table[window(w)];
            if e == UNASSIGNED {
                return Err(Damaged("bits that match no code"));
            }
            let [_, v, ..] = e.to_le_bytes();
            *slot = v;
            bit[k] += usize::from(lens[usize::from(v)]);
        }
        if bit[k] as u64 != bits[k] {
            return Err(Damaged("a stream's codes do not add up to its bit count"));
        }
    }
    Ok(())
}

/// The bulk of `decode`: while every stream has room for five more lookups and eight bytes to
/// load, one lookup of each stream in turn, so that the four chains of lookups overlap. Codes
/// are at most 11 bits, so one load holds five lookups' worth. Returns how many values each
/// stream made; `bit` is where each stream goes on.
fn interleaved(
    table: &[u32; TABLE_LEN],
    multi: bool,
    streams: &[&[u8]; STREAMS],
    outs: &mut [&mut [u8]; STREAMS],
    bit: &mut [usize; STREAMS],
) -> Result<[usize; STREAMS], Damaged> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("bmi2") {
        // SAFETY: the CPU has BMI2.
        return unsafe { interleaved_bmi2(table, multi, streams, outs, bit) };
    }
    if multi {
        interleaved_body::<true>(table, streams, outs, bit)
    } else {
        interleaved_body::<false>(table, streams, outs, bit)
    }
}

/// `interleaved_body` with shifts that need no fixed register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2")]
fn interleaved_bmi2(
    table: &[u32; TABLE_LEN],
    multi: bool,
    streams: &[&[u8]; STREAMS],
    outs: &mut [&mut [u8]; STREAMS],
    bit: &mut [usize; STREAMS],
) -> Result<[usize; STREAMS], Damaged> {
    if multi {
        interleaved_body::<true>(table, streams, outs, bit)
    } else {
        interleaved_body::<false>(table, streams, outs, bit)
    }
}

/// `MULTI`: the table holds several values per entry; else one, which keeps the four outputs
/// in step.
#[inline(always)]
fn interleaved_body<const MULTI: bool>(
    table: &[u32; TABLE_LEN],
    streams: &[&[u8]; STREAMS],
    outs: &mut [&mut [u8]; STREAMS],
    bit: &mut [usize; STREAMS],
) -> Result<[usize; STREAMS], Damaged> {
    // Five lookups of up to three values each, and the last store's extra byte.
    const ROOM: usize = 16;
    // Bit 63 of each loaded word (never read: five codes use at most 55 bits) marks where it
    // started, so the bits a round used are the leading zeros after it.
    const MARK: u64 = 1 << 63;
    let load = |s: &[u8], bit: usize| -> Option<u64> {
        let at = bit >> 3;
        let word = s.get(at..at + 8)?;
        Some(u64::from_le_bytes(word.try_into().expect("8")) >> (bit & 7) | MARK)
    };
    let [s0, s1, s2, s3] = *streams;
    let [b0, b1, b2, b3] = bit;
    let mut done = [0usize; STREAMS];
    let lens = outs.each_ref().map(|o| o.len());
    let bases = outs.each_mut().map(|o| o.as_mut_ptr());
    while (0..STREAMS).all(|k| done[k] + ROOM <= lens[k]) {
        let (Some(mut w0), Some(mut w1), Some(mut w2), Some(mut w3)) =
            (load(s0, *b0), load(s1, *b1), load(s2, *b2), load(s3, *b3))
        else {
            break;
        };
        // SAFETY: each stream's output has ROOM bytes from `done`; a round writes 4 bytes at
        // most 12 past it (four lookups of at most three values before the fifth store).
        let mut d: [*mut u8; STREAMS] = std::array::from_fn(|k| unsafe { bases[k].add(done[k]) });
        for _ in 0..5 {
            let t0 = table[window(w0)];
            let t1 = table[window(w1)];
            let t2 = table[window(w2)];
            let t3 = table[window(w3)];
            if !MULTI {
                let [_, v0, ..] = t0.to_le_bytes();
                let [_, v1, ..] = t1.to_le_bytes();
                let [_, v2, ..] = t2.to_le_bytes();
                let [_, v3, ..] = t3.to_le_bytes();
                // SAFETY: see above (one byte each).
                unsafe {
                    d[0].write(v0);
                    d[1].write(v1);
                    d[2].write(v2);
                    d[3].write(v3);
                    d = d.map(|p| p.add(1));
                }
            } else {
                // SAFETY: see above.
                unsafe {
                    d[0].cast::<[u8; 4]>()
                        .write_unaligned((t0 >> 8).to_le_bytes());
                    d[1].cast::<[u8; 4]>()
                        .write_unaligned((t1 >> 8).to_le_bytes());
                    d[2].cast::<[u8; 4]>()
                        .write_unaligned((t2 >> 8).to_le_bytes());
                    d[3].cast::<[u8; 4]>()
                        .write_unaligned((t3 >> 8).to_le_bytes());
                    d[0] = d[0].add((t0 >> 6 & 3) as usize);
                    d[1] = d[1].add((t1 >> 6 & 3) as usize);
                    d[2] = d[2].add((t2 >> 6 & 3) as usize);
                    d[3] = d[3].add((t3 >> 6 & 3) as usize);
                }
            }
            w0 = w0.wrapping_shr(t0);
            w1 = w1.wrapping_shr(t1);
            w2 = w2.wrapping_shr(t2);
            w3 = w3.wrapping_shr(t3);
        }
        let used = [w0, w1, w2, w3].map(|w| w.leading_zeros() as usize);
        // Five codes use at most 55 bits; an `UNASSIGNED` entry's shift alone is 63.
        if used.iter().any(|&u| u > 55) {
            return Err(Damaged("bits that match no code"));
        }
        for k in 0..STREAMS {
            // SAFETY: d[k] was advanced from bases[k] within its output (see above).
            done[k] = usize::try_from(unsafe { d[k].offset_from(bases[k]) }).expect("forward");
        }
        *b0 += used[0];
        *b1 += used[1];
        *b2 += used[2];
        *b3 += used[3];
    }
    Ok(done)
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "test data: random words cut to bytes, normal samples to f32"
)]
mod tests {
    use super::*;

    fn round_trip(data: &[u8]) -> usize {
        let hist = histogram(data);
        let lens = code_lengths(&hist);
        let mut out = vec![];
        encode(data, &hist, &lens, &mut out);
        assert!(out.len() <= coded_len(&hist, &lens));
        let mut back = vec![0u8; data.len()];
        decode(&out, &mut back).unwrap();
        assert_eq!(back, data);
        out.len()
    }

    #[test]
    fn round_trips_any_length_and_distribution() {
        let mut rng = crate::test_support::XorShift::new(7);
        for n in [
            0usize,
            1,
            3,
            4,
            5,
            19,
            20,
            21,
            64,
            1000,
            8191,
            8192,
            20_001,
            65536 + 3,
        ] {
            // Uniform bytes, a skewed distribution and a single value.
            let uniform: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            round_trip(&uniform);
            let skewed: Vec<u8> = (0..n)
                .map(|_| (rng.next_u64() % 64).leading_zeros() as u8)
                .collect();
            round_trip(&skewed);
            round_trip(&vec![42u8; n]);
        }
    }

    #[test]
    fn lengths_are_limited_and_fit() {
        // Fibonacci counts make the deepest Huffman trees.
        let mut hist = [0u32; 256];
        let (mut a, mut b) = (1u32, 1u32);
        for h in hist.iter_mut().take(40) {
            *h = a;
            (a, b) = (b, a.saturating_add(b));
        }
        let lens = code_lengths(&hist);
        assert!(lens.iter().all(|&l| u32::from(l) <= MAX_LEN));
        assert!(canonical_codes(&lens).is_some());
        let data: Vec<u8> = (0..40u8)
            .flat_map(|s| std::iter::repeat_n(s, hist[s as usize].min(5000) as usize))
            .collect();
        round_trip(&data);
    }

    #[test]
    fn skewed_bytes_shrink_to_their_entropy() {
        // An exponent-like plane: a few values, geometric.
        let mut rng = crate::test_support::XorShift::new(11);
        let data: Vec<u8> = (0..1 << 20)
            .map(|_| 120 + (rng.next_u64() | 1 << 20).trailing_zeros() as u8)
            .collect();
        // Entropy of a geometric(1/2) source: 2 bits per byte.
        let n = round_trip(&data);
        assert!(n < data.len() / 4 + data.len() / 50, "{n}");
    }

    /// Each entry of the several-values table holds what the one-value table decodes from
    /// its window, one code after the other: as many codes as fit (up to three), their bits.
    #[test]
    fn the_several_values_table_decodes_as_the_one_value_table() {
        let mut fib = [0u8; 256];
        let (mut a, mut b) = (1u32, 1u32);
        let mut hist = [0u32; 256];
        for h in hist.iter_mut().take(40) {
            *h = a;
            (a, b) = (b, a.saturating_add(b));
        }
        fib.copy_from_slice(&code_lengths(&hist));
        let mut geometric = [0u8; 256];
        for (s, l) in geometric.iter_mut().enumerate().take(11) {
            *l = u8::try_from(s + 1).unwrap().min(11);
        }
        // Incomplete codes: windows no code reaches.
        let mut two = [0u8; 256];
        two[7] = 2;
        two[9] = 2;
        let mut sparse = [0u8; 256];
        sparse[..100].fill(8);
        sparse[200] = 1;
        for lens in [fib, geometric, two, sparse] {
            let single = decode_table(&lens, false).unwrap();
            let multi = decode_table(&lens, true).unwrap();
            for w in 0..TABLE_LEN {
                let (mut rest, mut used, mut values) = (w, 0u32, vec![]);
                while values.len() < 3 {
                    let e = single[rest];
                    let l = e & 15;
                    if e == UNASSIGNED || used + l > MAX_LEN {
                        break;
                    }
                    values.push(u8::try_from(e >> 8).unwrap());
                    used += l;
                    rest >>= l;
                }
                let e = multi[w];
                if values.is_empty() {
                    assert_eq!(e, UNASSIGNED, "window {w}");
                    assert_eq!(single[w], UNASSIGNED, "window {w}");
                    continue;
                }
                assert_eq!(e & 15, used, "window {w}");
                assert_eq!(
                    e >> 6 & 3,
                    u32::try_from(values.len()).unwrap(),
                    "window {w}"
                );
                assert_eq!(
                    &e.to_le_bytes()[1..=values.len()],
                    &values[..],
                    "window {w}"
                );
            }
        }
    }

    /// Bits that match no code, deep inside a stream (where the four streams are decoded
    /// together), with one value per lookup and with several.
    #[test]
    fn an_unassigned_code_in_the_bulk_is_an_error() {
        for (lens_of, symbols) in [(2u8, 2usize), (8, 128)] {
            let mut lens = [0u8; 256];
            lens[..symbols].fill(lens_of);
            let mut rng = crate::test_support::XorShift::new(9);
            let data: Vec<u8> = (0..40_000)
                .map(|_| u8::try_from(rng.next_u64() % symbols as u64).unwrap())
                .collect();
            let hist = histogram(&data);
            let mut coded = vec![];
            encode(&data, &hist, &lens, &mut coded);
            let mut back = vec![0u8; data.len()];
            decode(&coded, &mut back).unwrap();
            assert_eq!(back, data);
            // Every code starts with a 0 bit (the codes fill only half the code space), so a
            // run of 1 bits in the middle of stream 0 matches none.
            coded[HEADER_LEN + 1000..HEADER_LEN + 1004].fill(0xff);
            assert_eq!(
                decode(&coded, &mut back),
                Err(Damaged("bits that match no code")),
                "{symbols} codes of {lens_of} bits"
            );
        }
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        // Below and above `MULTI_MIN_LEN`: one value per lookup, and several.
        for n in [5000, 20_000] {
            damage_of_a_plane_of(n);
        }
    }

    fn damage_of_a_plane_of(n: usize) {
        let mut rng = crate::test_support::XorShift::new(3);
        let data: Vec<u8> = (0..n)
            .map(|_| (rng.next_u64() % 200).leading_zeros() as u8)
            .collect();
        let hist = histogram(&data);
        let lens = code_lengths(&hist);
        let mut coded = vec![];
        encode(&data, &hist, &lens, &mut coded);
        let mut back = vec![0u8; data.len()];
        assert!(decode(&coded[..coded.len() - 1], &mut back).is_err());
        assert!(decode(&coded[..HEADER_LEN - 1], &mut back).is_err());
        let mut longer = coded.clone();
        longer.push(0);
        assert!(decode(&longer, &mut back).is_err());
        // Lengths that break Kraft's inequality.
        let mut bad = coded.clone();
        bad[..128].fill(0x11);
        assert_eq!(
            decode(&bad, &mut back),
            Err(Damaged("invalid code lengths"))
        );
        // No codes at all, and nothing in the streams: bits that match no code.
        let empty = [0u8; HEADER_LEN];
        assert_eq!(
            decode(&empty, &mut back),
            Err(Damaged("bits that match no code"))
        );
        assert_eq!(decode(&empty, &mut []), Ok(()));
        // Any flipped bit: an error or other bytes, never a panic.
        for i in 0..coded.len() * 8 {
            let mut c = coded.clone();
            c[i / 8] ^= 1 << (i % 8);
            let _ = decode(&c, &mut back);
        }
    }
}
