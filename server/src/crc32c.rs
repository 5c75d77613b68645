//! CRC-32C (Castagnoli), the transfer check of an upload from our own clients: computed by the
//! client over the bytes as it sends them and by the server over the bytes as they arrive, it
//! costs a small fraction of a second per GiB (the SSE 4.2 `crc32` instruction when the CPU has
//! it, chosen at run time; a table otherwise), where a second SHA-256 in the client would cost
//! as much as the server's own. It detects damage on the way (every error burst up to 32 bits,
//! and other damage but for one chance in 2^32), as S3's trailing CRC checksums do; it is not a
//! defence against someone forging bytes, which is the job of TLS. The stored record's
//! checksum is still the SHA-256 the server computes over what it received.

/// A running CRC-32C: feed it with [`Crc32c::update`], read it with [`Crc32c::value`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Crc32c(u32);

impl Crc32c {
    /// The CRC of nothing yet.
    pub fn new() -> Crc32c {
        Crc32c(0)
    }

    /// Add `data` to the bytes checked.
    pub fn update(&mut self, data: &[u8]) {
        self.0 = !update_raw(!self.0, data);
    }

    /// The CRC-32C of everything fed so far.
    pub fn value(&self) -> u32 {
        self.0
    }
}

/// The CRC-32C of `data` in one call.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = Crc32c::new();
    c.update(data);
    c.value()
}

/// The reflected polynomial 0x1EDC6F41.
const POLY: u32 = 0x82F6_3B78;

/// Slicing-by-8 tables, made at compile time.
static TABLES: [[u32; 256]; 8] = tables();

const fn tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0usize;
    while i < 256 {
        #[expect(clippy::cast_possible_truncation, reason = "i < 256")]
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut j = 1;
        while j < 8 {
            let prev = t[j - 1][i];
            t[j][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            j += 1;
        }
        i += 1;
    }
    t
}

fn update_raw(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2, checked just above.
        return unsafe { update_sse42(crc, data) };
    }
    update_table(crc, data)
}

fn update_table(mut crc: u32, data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let lo = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) ^ crc;
        let hi = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
        crc = TABLES[7][(lo & 0xFF) as usize]
            ^ TABLES[6][((lo >> 8) & 0xFF) as usize]
            ^ TABLES[5][((lo >> 16) & 0xFF) as usize]
            ^ TABLES[4][(lo >> 24) as usize]
            ^ TABLES[3][(hi & 0xFF) as usize]
            ^ TABLES[2][((hi >> 8) & 0xFF) as usize]
            ^ TABLES[1][((hi >> 16) & 0xFF) as usize]
            ^ TABLES[0][(hi >> 24) as usize];
    }
    for &b in words.remainder() {
        crc = (crc >> 8) ^ TABLES[0][((crc ^ u32::from(b)) & 0xFF) as usize];
    }
    crc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn update_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut c = u64::from(crc);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        c = _mm_crc32_u64(c, v);
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a CRC-32 in a u64 register"
    )]
    let mut c = c as u32;
    for &b in words.remainder() {
        c = _mm_crc32_u8(c, b);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::{Crc32c, crc32c, update_raw, update_table};

    #[test]
    fn known_values() {
        // The check value of CRC-32C, and RFC 3720's test vectors (iSCSI).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let inc: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&inc), 0x46DD_794E);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn pieces_and_both_ways_agree() {
        let data: Vec<u8> = (0..100_003u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
            .collect();
        let whole = crc32c(&data);
        for cut in [0, 1, 7, 8, 9, 4096, 50_001, 100_003] {
            let mut c = Crc32c::new();
            c.update(&data[..cut]);
            c.update(&data[cut..]);
            assert_eq!(c.value(), whole, "cut at {cut}");
        }
        for start in 0..9 {
            let part = &data[start..start + 1000];
            assert_eq!(
                update_raw(!0, part),
                update_table(!0, part),
                "offset {start}"
            );
        }
    }
}
