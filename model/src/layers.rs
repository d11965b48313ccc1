//! Small building blocks shared by the vision tower, the adapter and the LLM.
//!
//! They are ours rather than `tch::nn`'s for one reason: mixed precision. libtorch's autocast is only
//! reachable from tch with fp16 on CUDA, and we want bf16 with f32 master weights. So activations carry
//! the compute dtype and every layer casts its (f32) weights to the activation's dtype on the fly
//! (a differentiable cast: gradients land on the f32 weights); norms, RoPE, softmax and losses run in f32.
use tch::{Kind, Tensor, nn};

/// Weight init for fresh layers (std 0.02, as Hugging Face initialises these families).
pub(crate) const INIT_STD: f64 = 0.02;

fn cast(t: &Tensor, kind: Kind) -> Tensor {
    if t.kind() == kind {
        t.shallow_clone()
    } else {
        t.to_kind(kind)
    }
}

/// `y = x W^T + b` with `W: [out, in]` named `weight` (and `bias`), as in PyTorch checkpoints.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(p: nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        let weight = p.var(
            "weight",
            &[out_dim, in_dim],
            nn::Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            },
        );
        let bias = bias.then(|| p.var("bias", &[out_dim], nn::Init::Const(0.0)));
        Self { weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let k = x.kind();
        let b = self.bias.as_ref().map(|b| cast(b, k));
        x.linear(&cast(&self.weight, k), b.as_ref())
    }
}

/// LayerNorm over the last dimension, computed in f32.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        let weight = p.var("weight", &[dim], nn::Init::Const(1.0));
        let bias = p.var("bias", &[dim], nn::Init::Const(0.0));
        Self { weight, bias, eps }
    }

    /// Parameters that are kept for checkpoint round trips but do not train (e.g. SigLIP's
    /// `post_layernorm` when CoMP drops it).
    pub fn new_buffer(p: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: p.ones_no_train("weight", &[dim]),
            bias: p.zeros_no_train("bias", &[dim]),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = *x.size().last().expect("layer norm of a scalar");
        x.to_kind(Kind::Float)
            .layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, false)
            .to_kind(x.kind())
    }
}

/// Qwen2's RMSNorm: normalise in f32, cast back, then scale.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: p.var("weight", &[dim], nn::Init::Const(1.0)),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = x.to_kind(Kind::Float);
        let var = h.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let h = (h * (var + self.eps).rsqrt()).to_kind(x.kind());
        h * cast(&self.weight, x.kind())
    }
}

/// The GELU flavours the supported families use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_pytorch_tanh` (SigLIP).
    GeluTanh,
    /// Exact erf GELU (DINOv2, the adapter).
    Gelu,
}

impl Activation {
    pub fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Gelu => x.gelu("none"),
        }
    }
}
