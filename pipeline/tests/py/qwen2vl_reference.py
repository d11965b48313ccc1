#!/usr/bin/env python3
"""Reference oracle for the image path: Hugging Face transformers' Qwen2-VL image processor.

Sub-commands (each writes its answer to --out; the Rust tests and bench read it):

  smart-resize --out F.json
      transformers' own `smart_resize` over a dense grid of sizes (all h, w in 1..=N) and random large
      sizes, for several (min_pixels, max_pixels). Rows: [h, w, min, max, out_h, out_w] or
      [h, w, min, max, "aspect_ratio"] when transformers raises for the aspect ratio.

  process --backend {pil,torchvision} --temporal-patch-size T [--min-pixels N] [--max-pixels N]
          [--variants-dir D] --out PREFIX FILE...
      Runs the processor on each image (opened with Pillow, EXIF orientation applied, as a pipeline would)
      and writes PREFIX.json ([{file, grid_thw, offset, rows, cols}]) and PREFIX.bin (little-endian f32
      pixel_values, concatenated).

  png-variants --src IMG --out-dir D
      Writes PNG variants of IMG with Pillow: 16-bit RGB, 16-bit grey, 8-bit grey, grey+alpha, palette,
      palette with transparency, RGBA; plus a GIF and an RGBA WebP.

  bench --backend {pil,torchvision,pil-decode} --seconds S FILE...
      Single-threaded images/s of the processor (decode included) over the files, printed as JSON.
"""
import argparse
import io
import json
import os
import random
import sys
import time


def smart_resize_cmd(args):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    bounds = [
        (56 * 56, 28 * 28 * 1280),  # transformers' defaults
        (28 * 28, 28 * 28 * 16),  # force shrinking
        (28 * 28 * 64, 28 * 28 * 256),  # force growing
        (1, 28 * 28 * 4),
        (3136, 12845056),  # Qwen2.5-VL style large max
    ]
    rows = []

    def one(h, w, lo, hi):
        try:
            oh, ow = smart_resize(h, w, factor=28, min_pixels=lo, max_pixels=hi)
            rows.append([h, w, lo, hi, int(oh), int(ow)])
        except ValueError as e:
            assert "aspect ratio" in str(e), e
            rows.append([h, w, lo, hi, "aspect_ratio"])

    n = args.dense
    for lo, hi in bounds:
        for h in range(1, n + 1):
            for w in range(1, n + 1):
                one(h, w, lo, hi)
    rng = random.Random(1234)
    for _ in range(args.random):
        lo, hi = rng.choice(bounds)
        h = rng.randint(1, 20000)
        w = rng.randint(1, 20000) if rng.random() < 0.8 else max(1, h // rng.randint(150, 250))
        one(h, w, lo, hi)
    # Exact half-way points (h/28 = k + 0.5) exercise round-half-to-even.
    for k in range(0, 200):
        for lo, hi in bounds:
            one(28 * k + 14, 28 * (k + 1) + 14, lo, hi)
    with open(args.out, "w") as f:
        json.dump(rows, f)


def open_rgb_upright(path):
    from PIL import Image, ImageOps

    im = Image.open(path)
    im = ImageOps.exif_transpose(im)
    return im


def make_processor(backend, tps, min_pixels, max_pixels):
    kwargs = {"temporal_patch_size": tps}
    if min_pixels is not None:
        kwargs["min_pixels"] = min_pixels
    if max_pixels is not None:
        kwargs["max_pixels"] = max_pixels
    if backend == "pil":
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil(**kwargs)
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(**kwargs)


def process_cmd(args):
    import numpy as np
    import torch

    torch.set_num_threads(1)
    proc = make_processor(args.backend, args.temporal_patch_size, args.min_pixels, args.max_pixels)
    index = []
    offset = 0
    with open(args.out + ".bin", "wb") as binf:
        for path in args.files:
            im = open_rgb_upright(path)
            out = proc(images=[im], return_tensors="np")
            pv = np.ascontiguousarray(out["pixel_values"], dtype="<f4")
            grid = [int(x) for x in out["image_grid_thw"][0]]
            binf.write(pv.tobytes())
            index.append(
                {"file": path, "grid_thw": grid, "offset": offset, "rows": pv.shape[0], "cols": pv.shape[1]}
            )
            offset += pv.size
    with open(args.out + ".json", "w") as f:
        json.dump(index, f)


def png_variants_cmd(args):
    from PIL import Image

    src = Image.open(args.src).convert("RGB")
    w, h = src.size
    os.makedirs(args.out_dir, exist_ok=True)
    import numpy as np

    # Alpha ramp: opaque at the top, transparent at the bottom, so compositing shows.
    alpha = np.tile(np.linspace(255, 0, h).astype(np.uint8)[:, None], (1, w))
    grey = src.convert("L")

    # Pillow cannot write 16-bit RGB; the Rust test makes that variant with the `image` crate's encoder.
    g16 = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    g16.save(os.path.join(args.out_dir, "grey16.png"))
    grey.save(os.path.join(args.out_dir, "grey8.png"))
    la = Image.merge("LA", [grey, Image.fromarray(alpha)])
    la.save(os.path.join(args.out_dir, "grey_alpha.png"))
    pal = src.convert("P", palette=Image.ADAPTIVE, colors=64)
    pal.save(os.path.join(args.out_dir, "palette.png"))
    pal_t = pal.copy()
    pal_t.info["transparency"] = 0
    pal_t.save(os.path.join(args.out_dir, "palette_trns.png"), transparency=0)
    rgba = src.copy()
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(os.path.join(args.out_dir, "rgba.png"))
    rgba.save(os.path.join(args.out_dir, "rgba.webp"), lossless=True)
    src.save(os.path.join(args.out_dir, "first_frame.gif"), save_all=True,
             append_images=[src.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], duration=100)


def bench_cmd(args):
    import torch

    torch.set_num_threads(1)
    datas = [open(p, "rb").read() for p in args.files]
    from PIL import Image, ImageOps

    if args.backend == "pil-decode":
        def step(data):
            im = Image.open(io.BytesIO(data))
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.load()
    else:
        proc = make_processor(args.backend, args.temporal_patch_size, None, None)

        def step(data):
            im = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
            proc(images=[im], return_tensors="pt")

    for d in datas:  # warm-up
        step(d)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        for d in datas:
            step(d)
        n += len(datas)
    dt = time.perf_counter() - t0
    print(json.dumps({"backend": args.backend, "images": n, "seconds": dt, "images_per_s": n / dt}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("smart-resize")
    s.add_argument("--out", required=True)
    s.add_argument("--dense", type=int, default=300)
    s.add_argument("--random", type=int, default=20000)
    p = sub.add_parser("process")
    p.add_argument("--backend", choices=["pil", "torchvision"], default="pil")
    p.add_argument("--temporal-patch-size", type=int, default=2)
    p.add_argument("--min-pixels", type=int)
    p.add_argument("--max-pixels", type=int)
    p.add_argument("--out", required=True)
    p.add_argument("files", nargs="+")
    v = sub.add_parser("png-variants")
    v.add_argument("--src", required=True)
    v.add_argument("--out-dir", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--backend", choices=["pil", "torchvision", "pil-decode"], required=True)
    b.add_argument("--temporal-patch-size", type=int, default=2)
    b.add_argument("--seconds", type=float, default=5.0)
    b.add_argument("files", nargs="+")
    args = ap.parse_args()
    {"smart-resize": smart_resize_cmd, "process": process_cmd, "png-variants": png_variants_cmd,
     "bench": bench_cmd}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
