//! Packed (varlen) attention without a `(Σn)×(Σn)` mask.
//!
//! Images of different sizes, and samples of different lengths, share one sequence delimited by
//! `cu_seqlens`. Attention is block-diagonal, so we never build the full mask: segments of equal length
//! are gathered into one batched `scaled_dot_product_attention` call (the common case with bucketed
//! batches is a handful of calls), and the results are scattered back. Cost is `Σ nᵢ²`.
use std::collections::BTreeMap;

use tch::Tensor;

/// `q: [N, H, d]`, `k, v: [N, H_kv, d]` (GQA when `H_kv < H`), `cu_seqlens: [S + 1]` on the host.
/// Returns `[N, H * d]`. `causal` applies a causal mask inside each segment.
pub fn packed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &[i64],
    causal: bool,
) -> Tensor {
    let (n, h, d) = q.size3().expect("q must be [N, H, d]");
    let h_kv = k.size()[1];
    let (k, v) = if h_kv != h {
        let rep = h / h_kv;
        (
            k.repeat_interleave_self_int(rep, 1, None),
            v.repeat_interleave_self_int(rep, 1, None),
        )
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let mut groups: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for s in 0..cu_seqlens.len().saturating_sub(1) {
        let len = cu_seqlens[s + 1] - cu_seqlens[s];
        if len > 0 {
            groups.entry(len).or_default().push(s);
        }
    }
    let device = q.device();
    let mut pieces = Vec::with_capacity(groups.len());
    let mut order: Vec<i64> = Vec::with_capacity(n as usize);
    for (&len, segs) in &groups {
        let g = segs.len() as i64;
        let gather = |t: &Tensor| -> Tensor {
            if segs.len() == 1 {
                t.narrow(0, cu_seqlens[segs[0]], len)
            } else if is_contiguous_run(segs, cu_seqlens) {
                t.narrow(0, cu_seqlens[segs[0]], g * len)
            } else {
                let idx: Vec<i64> = segs
                    .iter()
                    .flat_map(|&s| cu_seqlens[s]..cu_seqlens[s + 1])
                    .collect();
                t.index_select(0, &Tensor::from_slice(&idx).to_device(device))
            }
        };
        let to_bhld = |t: Tensor| t.view([g, len, h, d]).transpose(1, 2);
        let (qg, kg, vg) = (to_bhld(gather(q)), to_bhld(gather(&k)), to_bhld(gather(&v)));
        let out = Tensor::scaled_dot_product_attention::<Tensor>(
            &qg, &kg, &vg, None, 0.0, causal, None, false,
        );
        pieces.push(out.transpose(1, 2).reshape([g * len, h * d]));
        order.extend(segs.iter().flat_map(|&s| cu_seqlens[s]..cu_seqlens[s + 1]));
    }
    if pieces.is_empty() {
        return Tensor::zeros([0, h * d], (q.kind(), device));
    }
    let out = if pieces.len() == 1 {
        pieces.pop().unwrap()
    } else {
        Tensor::cat(&pieces, 0)
    };
    if order.iter().enumerate().all(|(i, &r)| i as i64 == r) && order.len() as i64 == n {
        return out;
    }
    // Rows that belong to no segment (should not happen with well-formed cu_seqlens) stay zero.
    let mut inv = vec![order.len() as i64; n as usize];
    for (i, &r) in order.iter().enumerate() {
        inv[r as usize] = i as i64;
    }
    let padded = Tensor::cat(&[out, Tensor::zeros([1, h * d], (q.kind(), device))], 0);
    padded.index_select(0, &Tensor::from_slice(&inv).to_device(device))
}

fn is_contiguous_run(segs: &[usize], cu: &[i64]) -> bool {
    segs.windows(2)
        .all(|w| w[1] == w[0] + 1 && cu[w[1]] == cu[w[0] + 1])
}

/// Reference used by tests and the benchmark: one attention call per segment, no grouping.
pub fn per_segment_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &[i64],
    causal: bool,
) -> Tensor {
    let (_, h, d) = q.size3().expect("q must be [N, H, d]");
    let rep = h / k.size()[1];
    let outs: Vec<Tensor> = cu_seqlens
        .windows(2)
        .filter(|w| w[1] > w[0])
        .map(|w| {
            let len = w[1] - w[0];
            let f = |t: &Tensor, r: i64| {
                let t = t.narrow(0, w[0], len);
                let t = if r > 1 {
                    t.repeat_interleave_self_int(r, 1, None)
                } else {
                    t
                };
                t.transpose(0, 1).unsqueeze(0)
            };
            let o = Tensor::scaled_dot_product_attention::<Tensor>(
                &f(q, 1),
                &f(k, rep),
                &f(v, rep),
                None,
                0.0,
                causal,
                None,
                false,
            );
            o.squeeze_dim(0).transpose(0, 1).reshape([len, h * d])
        })
        .collect();
    Tensor::cat(&outs, 0)
}
