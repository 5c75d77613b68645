//! "Saving Visualizations" from the ml-dash Files tutorial: draws the loss curve into a real PNG (a tiny encoder
//! below stands in for matplotlib) and uploads it.
#[path = "support/rng.rs"]
mod rng;
#[path = "support/mod.rs"]
mod support;

use ml_dash::Experiment;

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

/// A grayscale PNG with stored (uncompressed) deflate blocks.
fn png(width: u32, height: u32, pixels: &[u8]) -> Vec<u8> {
    let mut raw = Vec::new();
    for row in pixels.chunks(width as usize) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, blk) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = u16::try_from(blk.len()).expect("blocks of at most 65535 bytes");
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(blk);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        let len = u32::try_from(data.len()).expect("a PNG chunk is under 4 GiB");
        out.extend_from_slice(&len.to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(data);
        out.extend_from_slice(&c);
        out.extend_from_slice(&crc32(&c).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &z);
    chunk(b"IEND", &[]);
    out
}

fn main() -> ml_dash::Result<()> {
    let (root, _scratch) = support::scratch();
    let experiment = Experiment::new("my-experiment", "project")
        .local_path(root)
        .open()?;
    // Generate plot
    let losses = [0.5, 0.4, 0.3, 0.25, 0.2];
    let (w, h) = (200u32, 100u32);
    let mut px = vec![255u8; (w * h) as usize];
    for x in 0..w {
        let t = f64::from(x) / f64::from(w - 1) * (losses.len() - 1) as f64;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "the floor of t, which is in 0..=4"
        )]
        let i = (t as usize).min(losses.len() - 2);
        let v = losses[i] + (losses[i + 1] - losses[i]) * (t - i as f64);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "the floor of a row in 19.8..=79.2 (v is in 0.2..=0.5)"
        )]
        let y = ((0.6 - v) / 0.5 * f64::from(h - 1)) as u32;
        px[(y.min(h - 1) * w + x) as usize] = 0;
    }
    std::fs::write("loss_curve.png", png(w, h, &px)).map_err(|e| ml_dash::Error::Io {
        path: "loss_curve.png".into(),
        source: e,
    })?;

    // Save and upload
    let r = experiment
        .file("loss_curve.png")
        .prefix("/visualizations")
        .description("Training loss over epochs")
        .tags(["plot"])
        .save()?;
    println!(
        "{} {} bytes {} ({})",
        r.full_path(),
        r.size_bytes,
        r.checksum,
        r.content_type
    );
    Ok(())
}
