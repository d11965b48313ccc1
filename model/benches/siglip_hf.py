"""Baseline for benches/vision.rs: forward+backward of transformers' SiglipVisionModel on the same
images (one call per image: transformers cannot pack different sizes), same thread count.

Usage: python3 siglip_hf.py CONFIG_JSON IMAGES_SAFETENSORS THREADS ITERS  -> prints JSON timings
"""
import json
import sys
import time

import torch
from safetensors.torch import load_file
from transformers import SiglipVisionConfig, SiglipVisionModel

cfg_path, images_path, threads, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
cfg = SiglipVisionConfig(**json.load(open(cfg_path)), vision_use_head=False, attn_implementation="sdpa")
model = SiglipVisionModel(cfg).train()
images = load_file(images_path)
imgs = [images[k] for k in sorted(images, key=lambda k: int(k.split(".")[1]))]


def step():
    model.zero_grad(set_to_none=True)
    for img in imgs:
        out = model(pixel_values=img.unsqueeze(0), interpolate_pos_encoding=True, output_hidden_states=True)
        out.hidden_states[-1].float().pow(2).mean().backward()


step()
times = []
for _ in range(iters):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"median_s": times[len(times) // 2], "min_s": times[0], "threads": torch.get_num_threads()}))
