//! Simulated training checkpoints for compression measurements: a model's weights initialized
//! like a real network (normal, scaled by `1/sqrt(fan_in)`), updated by Adam from noisy
//! gradients, saved as safetensors in fp32 or bf16. Deterministic for a seed. No I/O here.

#[path = "rng.rs"]
mod rng;
use rng::Rng;

/// A model: named 2-D weight tensors and their Adam state.
pub struct Model {
    pub tensors: Vec<(String, usize, usize)>,
    pub w: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    t: u32,
    rng: Rng,
    /// Adam learning rate (default 1e-3; `ML_DASH_LR` overrides it in the examples).
    pub lr: f32,
}

impl Model {
    /// Layers of a width-`d` MLP stack until about `params` parameters.
    pub fn new(params: usize, d: usize, seed: u64) -> Model {
        let mut rng = Rng::new(seed);
        let mut tensors = Vec::new();
        let mut n = 0;
        let mut i = 0;
        while n < params {
            let rows = d.min((params - n).div_ceil(d)).max(1);
            tensors.push((format!("layers.{i}.weight"), rows, d));
            n += rows * d;
            i += 1;
        }
        let mut w = Vec::with_capacity(n);
        for (_, rows, cols) in &tensors {
            let scale = (2.0 / *cols as f32).sqrt();
            for _ in 0..rows * cols {
                w.push(rng.normal() * scale);
            }
        }
        Model {
            tensors,
            m: vec![0.0; w.len()],
            v: vec![0.0; w.len()],
            w,
            t: 0,
            rng,
            lr: 1e-3,
        }
    }

    /// `steps` Adam steps (learning rate `self.lr`, betas 0.9 / 0.999, weight decay 0.01) on
    /// noisy gradients that pull weights toward a fixed target pattern.
    pub fn train(&mut self, steps: u32) {
        let (lr, b1, b2, eps, wd) = (self.lr, 0.9f32, 0.999f32, 1e-8f32, 0.01f32);
        for _ in 0..steps {
            self.t += 1;
            let t = i32::try_from(self.t).expect("fewer than 2^31 steps");
            let bc1 = 1.0 - b1.powi(t);
            let bc2 = 1.0 - b2.powi(t);
            for i in 0..self.w.len() {
                let g = 0.05 * self.w[i] + 0.02 * self.rng.normal();
                self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
                self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
                let upd = (self.m[i] / bc1) / ((self.v[i] / bc2).sqrt() + eps);
                self.w[i] -= lr * (upd + wd * self.w[i]);
            }
        }
    }

    /// The weights as a safetensors file (`bf16`: round-to-nearest-even bfloat16, else fp32).
    pub fn safetensors(&self, bf16: bool) -> Vec<u8> {
        let width = if bf16 { 2 } else { 4 };
        let mut header = String::from("{");
        let mut off = 0usize;
        for (k, (name, rows, cols)) in self.tensors.iter().enumerate() {
            let len = rows * cols * width;
            if k > 0 {
                header.push(',');
            }
            header.push_str(&format!(
                "\"{name}\":{{\"dtype\":\"{}\",\"shape\":[{rows},{cols}],\"data_offsets\":[{off},{}]}}",
                if bf16 { "BF16" } else { "F32" },
                off + len
            ));
            off += len;
        }
        header.push_str(",\"__metadata__\":{\"format\":\"pt\"}}");
        while (8 + header.len()) % 8 != 0 {
            header.push(' ');
        }
        let mut out = Vec::with_capacity(8 + header.len() + off);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for &x in &self.w {
            let b = x.to_bits();
            if bf16 {
                let r = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
                out.extend_from_slice(&(r as u16).to_le_bytes());
            } else {
                out.extend_from_slice(&b.to_le_bytes());
            }
        }
        out
    }
}

impl Model {
    /// The weights as a PyTorch-style checkpoint: a zip archive of stored entries, like
    /// `torch.save` writes (`archive/data.pkl`, then `archive/data/<i>` per tensor, each aligned
    /// to 64 bytes by an extra field). With `zip64` the end records are the zip64 ones (as for
    /// archives over 4 GiB) and the directory gives local offsets in zip64 extra fields.
    pub fn torch_zip(&self, bf16: bool, zip64: bool) -> Vec<u8> {
        self.torch_zip_in(bf16, zip64, "archive")
    }

    /// `torch_zip` with its entries under `root/` instead of `archive/` (`torch.save` to a path
    /// names the folder after the file: `epoch_3.pt` holds `epoch_3/data/0`, ...).
    pub fn torch_zip_in(&self, bf16: bool, zip64: bool, root: &str) -> Vec<u8> {
        let st = self.safetensors(bf16);
        let n = usize::try_from(u64::from_le_bytes(st[..8].try_into().expect("8")))
            .expect("a header of a few KiB");
        let data = &st[8 + n..];
        let width = if bf16 { 2 } else { 4 };
        let mut entries: Vec<(String, &[u8])> = Vec::new();
        let pickle = format!(
            "fake pickle: {} tensors at step {}",
            self.tensors.len(),
            self.t
        );
        entries.push((format!("{root}/data.pkl"), pickle.as_bytes()));
        let mut off = 0;
        for (i, (_, rows, cols)) in self.tensors.iter().enumerate() {
            let len = rows * cols * width;
            entries.push((format!("{root}/data/{i}"), &data[off..off + len]));
            off += len;
        }
        entries.push((format!("{root}/version"), b"3\n"));
        // The 16- and 32-bit fields of a zip without zip64 (a real torch.save switches to
        // zip64 past 4 GiB; these sizes have no zip64 field here).
        let u16_field = |n: usize| u16::try_from(n).expect("a name or count under 64 Ki");
        let u32_field = |n: usize| u32::try_from(n).expect("an entry or offset under 4 GiB");
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, body) in &entries {
            let at = out.len();
            let pad = (64 - (at + 30 + name.len() + 4) % 64) % 64;
            let crc = crc32(body);
            let head = |out: &mut Vec<u8>, sig: &[u8]| {
                out.extend_from_slice(sig);
                out.extend_from_slice(&[45, 0, 0, 0, 0, 0, 0, 0, 0x21, 0]);
                out.extend_from_slice(&crc.to_le_bytes());
                out.extend_from_slice(&u32_field(body.len()).to_le_bytes());
                out.extend_from_slice(&u32_field(body.len()).to_le_bytes());
                out.extend_from_slice(&u16_field(name.len()).to_le_bytes());
            };
            head(&mut out, b"PK\x03\x04");
            out.extend_from_slice(&u16_field(4 + pad).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"FB");
            out.extend_from_slice(&u16_field(pad).to_le_bytes());
            out.resize(out.len() + pad, b'Z');
            out.extend_from_slice(body);
            // Central directory record ("made by" is one more field before the local part).
            central.extend_from_slice(b"PK\x01\x02\x1e\x03");
            let mut local = Vec::new();
            head(&mut local, b"");
            central.extend_from_slice(&local);
            central.extend_from_slice(&(if zip64 { 12u16 } else { 0 }).to_le_bytes());
            central.extend_from_slice(&[0; 8]); // comment len, disk, internal, external attrs
            central.extend_from_slice(&[0; 2]);
            let local_field = if zip64 { u32::MAX } else { u32_field(at) };
            central.extend_from_slice(&local_field.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
            if zip64 {
                central.extend_from_slice(&[1, 0, 8, 0]);
                central.extend_from_slice(&(at as u64).to_le_bytes());
            }
        }
        let cd_at = out.len();
        out.extend_from_slice(&central);
        let count = entries.len();
        if zip64 {
            let z_at = out.len();
            out.extend_from_slice(b"PK\x06\x06");
            out.extend_from_slice(&44u64.to_le_bytes());
            out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&(count as u64).to_le_bytes());
            out.extend_from_slice(&(count as u64).to_le_bytes());
            out.extend_from_slice(&(central.len() as u64).to_le_bytes());
            out.extend_from_slice(&(cd_at as u64).to_le_bytes());
            out.extend_from_slice(b"PK\x06\x07\0\0\0\0");
            out.extend_from_slice(&(z_at as u64).to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(
                b"PK\x05\x06\0\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\0\0",
            );
        } else {
            out.extend_from_slice(b"PK\x05\x06\0\0\0\0");
            out.extend_from_slice(&u16_field(count).to_le_bytes());
            out.extend_from_slice(&u16_field(count).to_le_bytes());
            out.extend_from_slice(&u32_field(central.len()).to_le_bytes());
            out.extend_from_slice(&u32_field(cd_at).to_le_bytes());
            out.extend_from_slice(&[0, 0]);
        }
        out
    }
}

/// CRC-32 (IEEE), as zip records it.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}
