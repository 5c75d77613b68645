//! Splitting elements into byte planes and merging them back (the transpose under the plane
//! codec). No I/O here.
//!
//! Plane k of data with `w`-byte elements holds bytes k, k+w, k+2w, ... Done a byte at a time
//! this transpose costs more than the entropy coding of the one plane that pays, so x86-64 with
//! AVX2 moves 128 bytes per step with byte shuffles; the portable code gives the same bytes.
//!
//! With `rotate`, each little-endian element is rotated left by one bit first (and right by one
//! after merging): a float's sign bit moves to the lowest bit and its top byte becomes the whole
//! exponent, which is more predictable than the sign with seven exponent bits.

use crate::format::chunker::Simd;

/// The byte planes of `data` (width 2 or 4) into `planes[..width]`, resized to `len / width`
/// each; the `len % width` tail is left out.
pub fn split(data: &[u8], width: usize, rotate: bool, planes: &mut Vec<Vec<u8>>) {
    split_on(data, width, rotate, planes, Simd::detect());
}

#[cfg(any(test, feature = "testing"))]
/// `split` with a given instruction set (tests and benchmarks); one this CPU lacks runs the
/// portable code.
pub fn split_with(data: &[u8], width: usize, rotate: bool, planes: &mut Vec<Vec<u8>>, simd: Simd) {
    split_on(data, width, rotate, planes, runnable(simd));
}

#[cfg(any(test, feature = "testing"))]
/// `simd` if this CPU runs it, else the portable code.
fn runnable(simd: Simd) -> Simd {
    if Simd::available().contains(&simd) {
        simd
    } else {
        Simd::Portable
    }
}

/// `split` on `simd`, which must be one `Simd::available` lists.
fn split_on(data: &[u8], width: usize, rotate: bool, planes: &mut Vec<Vec<u8>>, simd: Simd) {
    assert!(width == 2 || width == 4, "plane widths are 2 and 4");
    let n = data.len() / width;
    planes.resize_with(width, Vec::new);
    for p in planes.iter_mut() {
        p.resize(n, 0);
    }
    let done = match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `simd` is one `Simd::available` lists: `Simd::Avx2` only when the CPU has AVX2.
        Simd::Avx2 => unsafe { x86::split_avx2(data, width, rotate, planes) },
        _ => 0,
    };
    match &mut planes[..width] {
        [p0, p1, p2, p3] => {
            let it = data[done * 4..].chunks_exact(4).zip(p0[done..].iter_mut());
            let it = it.zip(p1[done..].iter_mut());
            for (((c, a), b), (d, e)) in it.zip(p2[done..].iter_mut().zip(p3[done..].iter_mut())) {
                let mut c: [u8; 4] = c.try_into().expect("4 bytes");
                if rotate {
                    c = u32::from_le_bytes(c).rotate_left(1).to_le_bytes();
                }
                (*a, *b, *d, *e) = (c[0], c[1], c[2], c[3]);
            }
        }
        [p0, p1] => {
            let it = data[done * 2..].chunks_exact(2).zip(p0[done..].iter_mut());
            for ((c, a), b) in it.zip(p1[done..].iter_mut()) {
                let mut c: [u8; 2] = c.try_into().expect("2 bytes");
                if rotate {
                    c = u16::from_le_bytes(c).rotate_left(1).to_le_bytes();
                }
                (*a, *b) = (c[0], c[1]);
            }
        }
        _ => unreachable!("width checked above"),
    }
}

/// Merge `planes` (2 or 4 of equal length `n`) into `out` (`n * planes.len()` bytes).
pub fn interleave(planes: &[&[u8]], rotate: bool, out: &mut [u8]) {
    interleave_on(planes, rotate, out, Simd::detect());
}

#[cfg(any(test, feature = "testing"))]
/// `interleave` with a given instruction set (tests and benchmarks); one this CPU lacks runs
/// the portable code.
pub fn interleave_with(planes: &[&[u8]], rotate: bool, out: &mut [u8], simd: Simd) {
    interleave_on(planes, rotate, out, runnable(simd));
}

/// `interleave` on `simd`, which must be one `Simd::available` lists.
fn interleave_on(planes: &[&[u8]], rotate: bool, out: &mut [u8], simd: Simd) {
    let width = planes.len();
    assert!(width == 2 || width == 4, "plane widths are 2 and 4");
    let n = planes[0].len();
    assert!(planes.iter().all(|p| p.len() == n) && out.len() == n * width);
    let done = match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `simd` is one `Simd::available` lists: `Simd::Avx2` only when the CPU has AVX2.
        Simd::Avx2 => unsafe { x86::interleave_avx2(planes, rotate, out) },
        _ => 0,
    };
    match planes {
        [p0, p1, p2, p3] => {
            let it = out[done * 4..]
                .chunks_exact_mut(4)
                .zip(p0[done..].iter().zip(&p1[done..]))
                .zip(p2[done..].iter().zip(&p3[done..]));
            for ((o, (a, b)), (c, d)) in it {
                let mut e = [*a, *b, *c, *d];
                if rotate {
                    e = u32::from_le_bytes(e).rotate_right(1).to_le_bytes();
                }
                o.copy_from_slice(&e);
            }
        }
        [p0, p1] => {
            let it = out[done * 2..]
                .chunks_exact_mut(2)
                .zip(p0[done..].iter().zip(&p1[done..]));
            for (o, (a, b)) in it {
                let mut e = [*a, *b];
                if rotate {
                    e = u16::from_le_bytes(e).rotate_right(1).to_le_bytes();
                }
                o.copy_from_slice(&e);
            }
        }
        _ => unreachable!("width checked above"),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Within each 16-byte lane, the 4x4 byte transpose (its own inverse): bytes 0,4,8,12, then
    /// 1,5,9,13, ...
    const T4: [i8; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];
    /// Within each lane: even bytes, then odd bytes.
    const EVEN_ODD: [i8; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15];
    /// Its inverse.
    const MERGE2: [i8; 16] = [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15];

    #[target_feature(enable = "avx2")]
    fn both_lanes(t: [i8; 16]) -> __m256i {
        // SAFETY: 16 bytes read from a 16-byte array.
        let lane = unsafe { _mm_loadu_si128(t.as_ptr().cast()) };
        _mm256_broadcastsi128_si256(lane)
    }

    /// Split whole 128-byte blocks of `data`; returns the elements done.
    #[target_feature(enable = "avx2")]
    pub unsafe fn split_avx2(
        data: &[u8],
        width: usize,
        rotate: bool,
        planes: &mut [Vec<u8>],
    ) -> usize {
        let blocks = data.len() / 128;
        let per = 128 / width; // elements per block
        let src = data.as_ptr();
        // SAFETY (all loads and stores below): block b reads data[128b..128b+128] and writes
        // planes[k][b*per .. b*per + per] (per = 32 or 64), inside `blocks * 128 <= len` and
        // `blocks * per <= len / width`, the planes' length.
        unsafe {
            if width == 4 {
                let shuf = both_lanes(T4);
                let gather = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
                let out: Vec<*mut u8> = planes.iter_mut().map(|p| p.as_mut_ptr()).collect();
                for b in 0..blocks {
                    let mut v = [_mm256_setzero_si256(); 4];
                    for (i, v) in v.iter_mut().enumerate() {
                        let mut x = _mm256_loadu_si256(src.add(128 * b + 32 * i).cast());
                        if rotate {
                            x = _mm256_or_si256(_mm256_slli_epi32(x, 1), _mm256_srli_epi32(x, 31));
                        }
                        // u64 lanes: planes 0..3 of these 8 elements.
                        *v = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(x, shuf), gather);
                    }
                    let t0 = _mm256_unpacklo_epi64(v[0], v[1]);
                    let t1 = _mm256_unpackhi_epi64(v[0], v[1]);
                    let t2 = _mm256_unpacklo_epi64(v[2], v[3]);
                    let t3 = _mm256_unpackhi_epi64(v[2], v[3]);
                    let p = [
                        _mm256_permute2x128_si256(t0, t2, 0x20),
                        _mm256_permute2x128_si256(t1, t3, 0x20),
                        _mm256_permute2x128_si256(t0, t2, 0x31),
                        _mm256_permute2x128_si256(t1, t3, 0x31),
                    ];
                    for k in 0..4 {
                        _mm256_storeu_si256(out[k].add(b * per).cast(), p[k]);
                    }
                }
            } else {
                let shuf = both_lanes(EVEN_ODD);
                let (o0, o1) = (planes[0].as_mut_ptr(), planes[1].as_mut_ptr());
                for b in 0..blocks {
                    for h in 0..2 {
                        let at = src.add(128 * b + 64 * h);
                        let mut x = _mm256_loadu_si256(at.cast());
                        let mut y = _mm256_loadu_si256(at.add(32).cast());
                        if rotate {
                            x = _mm256_or_si256(_mm256_slli_epi16(x, 1), _mm256_srli_epi16(x, 15));
                            y = _mm256_or_si256(_mm256_slli_epi16(y, 1), _mm256_srli_epi16(y, 15));
                        }
                        let x = _mm256_shuffle_epi8(x, shuf);
                        let y = _mm256_shuffle_epi8(y, shuf);
                        // u64 lanes [a0, b0, a1, b1] and [c0, d0, c1, d1].
                        let x = _mm256_permute4x64_epi64(x, 0b11_01_10_00);
                        let y = _mm256_permute4x64_epi64(y, 0b11_01_10_00);
                        let off = b * per + 32 * h;
                        _mm256_storeu_si256(
                            o0.add(off).cast(),
                            _mm256_permute2x128_si256(x, y, 0x20),
                        );
                        _mm256_storeu_si256(
                            o1.add(off).cast(),
                            _mm256_permute2x128_si256(x, y, 0x31),
                        );
                    }
                }
            }
        }
        blocks * per
    }

    /// Merge whole 128-byte blocks of `out`; returns the elements done.
    #[target_feature(enable = "avx2")]
    pub unsafe fn interleave_avx2(planes: &[&[u8]], rotate: bool, out: &mut [u8]) -> usize {
        let width = planes.len();
        let blocks = out.len() / 128;
        let per = 128 / width;
        let dst = out.as_mut_ptr();
        // SAFETY (all loads and stores below): block b reads planes[k][b*per .. b*per + per]
        // and writes out[128b .. 128b+128], inside the lengths checked by the caller
        // (`out.len() == n * width`, every plane n long).
        unsafe {
            if width == 4 {
                let shuf = both_lanes(T4);
                let scatter = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
                for b in 0..blocks {
                    let p = [
                        _mm256_loadu_si256(planes[0].as_ptr().add(b * per).cast()),
                        _mm256_loadu_si256(planes[1].as_ptr().add(b * per).cast()),
                        _mm256_loadu_si256(planes[2].as_ptr().add(b * per).cast()),
                        _mm256_loadu_si256(planes[3].as_ptr().add(b * per).cast()),
                    ];
                    let t0 = _mm256_permute2x128_si256(p[0], p[2], 0x20);
                    let t1 = _mm256_permute2x128_si256(p[1], p[3], 0x20);
                    let t2 = _mm256_permute2x128_si256(p[0], p[2], 0x31);
                    let t3 = _mm256_permute2x128_si256(p[1], p[3], 0x31);
                    let v = [
                        _mm256_unpacklo_epi64(t0, t1),
                        _mm256_unpackhi_epi64(t0, t1),
                        _mm256_unpacklo_epi64(t2, t3),
                        _mm256_unpackhi_epi64(t2, t3),
                    ];
                    for (i, v) in v.into_iter().enumerate() {
                        let mut x =
                            _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(v, scatter), shuf);
                        if rotate {
                            x = _mm256_or_si256(_mm256_srli_epi32(x, 1), _mm256_slli_epi32(x, 31));
                        }
                        _mm256_storeu_si256(dst.add(128 * b + 32 * i).cast(), x);
                    }
                }
            } else {
                let shuf = both_lanes(MERGE2);
                let (p0, p1) = (planes[0].as_ptr(), planes[1].as_ptr());
                for b in 0..blocks {
                    for h in 0..2 {
                        let off = b * per + 32 * h;
                        let a = _mm256_loadu_si256(p0.add(off).cast());
                        let c = _mm256_loadu_si256(p1.add(off).cast());
                        let x = _mm256_permute2x128_si256(a, c, 0x20);
                        let y = _mm256_permute2x128_si256(a, c, 0x31);
                        let x = _mm256_permute4x64_epi64(x, 0b11_01_10_00);
                        let y = _mm256_permute4x64_epi64(y, 0b11_01_10_00);
                        let at = dst.add(128 * b + 64 * h);
                        let mut x = _mm256_shuffle_epi8(x, shuf);
                        let mut y = _mm256_shuffle_epi8(y, shuf);
                        if rotate {
                            x = _mm256_or_si256(_mm256_srli_epi16(x, 1), _mm256_slli_epi16(x, 15));
                            y = _mm256_or_si256(_mm256_srli_epi16(y, 1), _mm256_slli_epi16(y, 15));
                        }
                        _mm256_storeu_si256(at.cast(), x);
                        _mm256_storeu_si256(at.add(32).cast(), y);
                    }
                }
            }
        }
        blocks * per
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_instruction_set_splits_and_merges_alike() {
        let data = crate::test_support::random_bytes(17, 4096 + 131);
        let rotl = |e: &[u8]| -> Vec<u8> {
            match e.len() {
                4 => u32::from_le_bytes(e.try_into().unwrap())
                    .rotate_left(1)
                    .to_le_bytes()
                    .to_vec(),
                _ => u16::from_le_bytes(e.try_into().unwrap())
                    .rotate_left(1)
                    .to_le_bytes()
                    .to_vec(),
            }
        };
        for (width, rotate) in [(2, false), (4, false), (2, true), (4, true)] {
            for len in [0, 1, 5, 127, 128, 129, 255, 256, 1000, 4096 + 131] {
                let data = &data[..len];
                let mut want = vec![];
                split_with(data, width, rotate, &mut want, Simd::Portable);
                for (k, p) in want.iter().enumerate() {
                    let expect: Vec<u8> = data
                        .chunks_exact(width)
                        .map(|e| if rotate { rotl(e)[k] } else { e[k] })
                        .collect();
                    assert_eq!(p, &expect, "portable, width {width}, len {len}");
                }
                let whole = len / width * width;
                for simd in Simd::available() {
                    let what = format!("{simd:?} width {width} rotate {rotate} len {len}");
                    let mut got = vec![vec![9u8; 3]; 5];
                    split_with(data, width, rotate, &mut got, simd);
                    assert_eq!(&got[..width], &want[..], "{what}");
                    let refs: Vec<&[u8]> = want.iter().map(Vec::as_slice).collect();
                    let mut back = vec![0u8; whole];
                    interleave_with(&refs, rotate, &mut back, simd);
                    assert_eq!(back, &data[..whole], "{what}");
                }
            }
        }
    }
}
