//! Rotary position embeddings and the merge-window token order.
//!
//! Vision: Qwen2-VL-style 2D RoPE. Each patch has a (row, col) id; with head dim `d`, the inverse
//! frequencies are `1/theta^(2j/(d/2))` for `j < d/4`; the first `d/4` rotary angles use the row, the next
//! `d/4` the column, and the `d/2` angles are duplicated so rotate-half pairs dim `i` with `i + d/2`.
//! Text: the usual 1D RoPE of Qwen2 with `1/theta^(2j/d)`. Everything is computed in f32.
use tch::{Device, Kind, Tensor};

/// Raster indices (`row * w + col`) of an `h x w` grid listed in merge-window order: the grid is
/// traversed as `(h/m, w/m, m, m)` so the `m*m` patches the adapter merges are consecutive. This is the
/// order `comp_pipeline` lays patches out in.
pub fn merge_window_order(h: i64, w: i64, m: i64) -> Vec<i64> {
    let mut out = Vec::with_capacity((h * w) as usize);
    for bh in 0..h / m {
        for bw in 0..w / m {
            for i in 0..m {
                for j in 0..m {
                    out.push((bh * m + i) * w + bw * m + j);
                }
            }
        }
    }
    out
}

/// The inverse of [`merge_window_order`]: for each raster position, its index in window order.
pub fn raster_from_window(h: i64, w: i64, m: i64) -> Vec<i64> {
    let order = merge_window_order(h, w, m);
    let mut inv = vec![0i64; order.len()];
    for (i, &r) in order.iter().enumerate() {
        inv[r as usize] = i as i64;
    }
    inv
}

/// `(row, col)` ids of every token of a packed batch, in merge-window order, frames repeated.
pub fn vision_position_ids(grid_thw: &[[i64; 3]], m: i64) -> (Vec<i64>, Vec<i64>) {
    let (mut rows, mut cols) = (Vec::new(), Vec::new());
    for &[t, h, w] in grid_thw {
        let order = merge_window_order(h, w, m);
        for _ in 0..t {
            rows.extend(order.iter().map(|r| r / w));
            cols.extend(order.iter().map(|r| r % w));
        }
    }
    (rows, cols)
}

/// cos/sin tables `[n, head_dim]` (f32) of the vision 2D RoPE for the given ids.
pub fn vision_cos_sin(
    rows: &[i64],
    cols: &[i64],
    head_dim: i64,
    theta: f64,
    device: Device,
) -> (Tensor, Tensor) {
    let quarter = head_dim / 4;
    let inv_freq = inv_freq(quarter * 2, theta, device); // 1/theta^(2j/(d/2)), j < d/4
    let r = Tensor::from_slice(rows)
        .to_device(device)
        .to_kind(Kind::Float);
    let c = Tensor::from_slice(cols)
        .to_device(device)
        .to_kind(Kind::Float);
    let fr = r.unsqueeze(1) * inv_freq.unsqueeze(0);
    let fc = c.unsqueeze(1) * inv_freq.unsqueeze(0);
    let freqs = Tensor::cat(&[fr, fc], 1);
    let emb = Tensor::cat(&[&freqs, &freqs], 1);
    (emb.cos(), emb.sin())
}

/// cos/sin tables `[n, head_dim]` (f32) of 1D RoPE at `position_ids` (`[n]`, int64).
pub fn text_cos_sin(position_ids: &Tensor, head_dim: i64, theta: f64) -> (Tensor, Tensor) {
    let inv_freq = inv_freq(head_dim, theta, position_ids.device());
    let freqs = position_ids.to_kind(Kind::Float).unsqueeze(1) * inv_freq.unsqueeze(0);
    let emb = Tensor::cat(&[&freqs, &freqs], 1);
    (emb.cos(), emb.sin())
}

/// `1 / theta^(arange(0, dim, 2) / dim)`, length `dim / 2`.
fn inv_freq(dim: i64, theta: f64, device: Device) -> Tensor {
    let v: Vec<f32> = (0..dim / 2)
        .map(|j| (1.0 / theta.powf(2.0 * j as f64 / dim as f64)) as f32)
        .collect();
    Tensor::from_slice(&v).to_device(device)
}

/// Rotate `x: [n, heads, d]` by per-token `cos/sin: [n, d]`, rotate-half pairing, in f32.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let kind = x.kind();
    let xf = x.to_kind(Kind::Float);
    let d = xf.size()[2];
    let x1 = xf.narrow(2, 0, d / 2);
    let x2 = xf.narrow(2, d / 2, d / 2);
    let rotated = Tensor::cat(&[x2.neg(), x1], 2);
    let (c, s) = (cos.unsqueeze(1), sin.unsqueeze(1));
    (xf * c + rotated * s).to_kind(kind)
}
