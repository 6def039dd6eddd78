#!/usr/bin/env python3
"""Makes a folder of 12-megapixel JPEGs (4000x3000 or 3000x4000) from real photos, for
`scripts/bench/index_photos.sh`: what a camera folder costs to index. Not committed (about
1.5 GB for 500 files).

Each of the given photos is upscaled once (bicubic) to 12 MP; every file is one of those, cut
at its own offset (a 96% window, shifted), and re-encoded at a quality between 85 and 95 with
4:2:0 chroma, as cameras write them. A little noise is added to each upscale. Deterministic for a given seed.

Usage: make_photo_folder.py OUT_DIR PHOTO... [--count 500] [--seed 1]
       (pinned venv: pillow==11.3.0 numpy==2.2.6)
"""
import argparse
import os
import random

import numpy as np
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("photos", nargs="+")
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(args.seed)
    bases = []
    for i, p in enumerate(args.photos):
        im = Image.open(p).convert("RGB")
        w, h = (4166, 3125) if im.width >= im.height else (3125, 4166)
        big = np.asarray(im.resize((w, h), Image.BICUBIC), dtype=np.float32)
        # Sensor-like grain (sigma 3 grey levels): an upscale alone is smoother than any camera
        # photo and would compress, and decode, unrealistically fast.
        noise = np.random.default_rng(args.seed + i).normal(0, 3, big.shape)
        bases.append(Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8)))
    for n in range(args.count):
        im = bases[n % len(bases)]
        w, h = im.size
        cw, ch = (4000, 3000) if w > h else (3000, 4000)
        x, y = rng.randrange(0, w - cw + 1), rng.randrange(0, h - ch + 1)
        im.crop((x, y, x + cw, y + ch)).save(
            os.path.join(args.out, f"IMG_{n:04d}.jpg"), "JPEG",
            quality=rng.randrange(85, 96), subsampling=2)
    print(f"{args.count} files in {args.out}")


if __name__ == "__main__":
    main()
