"""Reference outputs from Hugging Face transformers for the comp-model parity tests.

Usage: python3 reference.py {siglip|qwen2|rope|dinov2|load_export} DIR

Writes a tiny random model (config.json + model.safetensors, via save_pretrained) where relevant,
plus `io.safetensors` with the inputs and the expected outputs. All f32, fixed seeds.
"""
import sys

import torch
from safetensors.torch import save_file

P, M = 14, 2


def window_patches(img):
    """[C, H, W] -> [h*w, C*P*P] rows (channel-major, then rows, then columns), merge-window order."""
    c, hh, ww = img.shape
    h, w = hh // P, ww // P
    x = img.reshape(c, h, P, w, P).permute(1, 3, 0, 2, 4).reshape(h, w, c * P * P)
    x = x.reshape(h // M, M, w // M, M, -1).permute(0, 2, 1, 3, 4).reshape(h * w, -1)
    return x.contiguous()


def perturb(model, scale=0.05):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def siglip(out):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    cfg = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             image_size=8 * P, patch_size=P, layer_norm_eps=1e-6, attn_implementation="eager")
    model = SiglipVisionModel(cfg).eval()
    perturb(model)
    model.save_pretrained(out, safe_serialization=True)
    io = {}
    for i, (h, w) in enumerate([(4, 6), (8, 8), (6, 4), (2, 2), (10, 12)]):
        img = torch.randn(1, 3, h * P, w * P)
        with torch.no_grad():
            o = model(pixel_values=img, interpolate_pos_encoding=True, output_hidden_states=True)
        io[f"patches.{i}"] = window_patches(img[0])
        io[f"grid.{i}"] = torch.tensor([1, h, w], dtype=torch.int64)
        io[f"hidden.{i}"] = o.hidden_states[-1][0].contiguous()  # before post_layernorm, raster order
        io[f"last.{i}"] = o.last_hidden_state[0].contiguous()  # after post_layernorm
    save_file(io, f"{out}/io.safetensors")


def dinov2(out):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=64, mlp_ratio=2, num_hidden_layers=2, num_attention_heads=4,
                       image_size=6 * P, patch_size=P, layer_norm_eps=1e-6, layerscale_value=0.5)
    model = Dinov2Model(cfg).eval()
    perturb(model)
    model.save_pretrained(out, safe_serialization=True)
    save_file({"probe": torch.zeros(1)}, f"{out}/io.safetensors")


def qwen2(out):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      rope_theta=10000.0, tie_word_embeddings=False, rms_norm_eps=1e-6, attn_implementation="eager")
    model = Qwen2ForCausalLM(cfg).eval()
    perturb(model)
    model.save_pretrained(out, safe_serialization=True)
    io = {}
    for i, n in enumerate([7, 11, 3]):
        ids = torch.randint(0, 97, (1, n))
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        io[f"ids.{i}"] = ids[0]
        io[f"logits.{i}"] = logits.contiguous()
    save_file(io, f"{out}/io.safetensors")


def rope(out):
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import (Qwen2VLVisionRotaryEmbedding,
                                                                apply_rotary_pos_emb_vision)
    from transformers.vision_utils import get_vision_position_ids

    torch.manual_seed(0)
    heads, head_dim = 4, 32
    cfg = Qwen2VLVisionConfig(embed_dim=heads * head_dim, num_heads=heads, spatial_merge_size=M)
    rot = Qwen2VLVisionRotaryEmbedding(cfg)
    grid = torch.tensor([[1, 4, 6], [2, 2, 4], [1, 8, 2]])
    pos = get_vision_position_ids(grid, M)
    n = int(grid.prod(-1).sum())
    q = torch.randn(n, heads, head_dim)
    k = torch.randn(n, heads, head_dim)
    cos, sin = rot(q, pos)
    q2, k2 = apply_rotary_pos_emb_vision(q, k, cos, sin)
    save_file({"grid": grid, "q": q, "k": k, "q_rot": q2.contiguous(), "k_rot": k2.contiguous(),
               "cos": cos.contiguous(), "sin": sin.contiguous()}, f"{out}/io.safetensors")


def load_export(out):
    """Load a tower exported by comp-model with transformers; fail on any missing/unexpected tensor;
    for SigLIP, record hidden states (before post_layernorm) for a few images."""
    import json

    from transformers import Dinov2Model, SiglipVisionModel

    cfg = json.load(open(f"{out}/config.json"))
    cls = Dinov2Model if cfg["model_type"] == "dinov2" else SiglipVisionModel
    model, info = cls.from_pretrained(out, output_loading_info=True)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    assert not bad, f"export does not load cleanly: {bad}"
    io = {"ok": torch.ones(1)}
    if cls is SiglipVisionModel:
        torch.manual_seed(3)
        for i, (h, w) in enumerate([(4, 6), (2, 2)]):
            img = torch.randn(1, 3, h * P, w * P)
            with torch.no_grad():
                o = model.eval()(pixel_values=img, interpolate_pos_encoding=True, output_hidden_states=True)
            io[f"patches.{i}"] = window_patches(img[0])
            io[f"grid.{i}"] = torch.tensor([1, h, w], dtype=torch.int64)
            io[f"hidden.{i}"] = o.hidden_states[-1][0].contiguous()
    save_file(io, f"{out}/io.safetensors")


if __name__ == "__main__":
    {"siglip": siglip, "qwen2": qwen2, "rope": rope, "dinov2": dinov2, "load_export": load_export}[sys.argv[1]](sys.argv[2])
