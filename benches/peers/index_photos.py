#!/usr/bin/env python3
"""Peer for `scripts/bench/index_photos.sh`: what `htg index` does to a folder of photos, done
the usual Python way, at the same thread count: PIL with `draft()` (libjpeg's DCT scaling) to
decode, the short side resized to 256 (bilinear) and the centre 224 cut, `(x - 127) / 128`,
batches of 32 through onnxruntime's Python API, and the embeddings kept in memory.

Decoding runs in a thread pool of T threads (PIL releases the GIL while it decodes and
resizes), and onnxruntime uses T intra-op threads, as `htg index --threads T` does.
Setup: `pip install onnxruntime==1.31.1 numpy==2.2.6 pillow==11.3.0`.

Usage: index_photos.py DIR --model models/photo.onnx [--threads 2] [--batch 32] [--no-draft]
Prints one JSON line: images, seconds, images_per_s, peak_rss_mib, decode_ms_per_image.
"""
import argparse
import concurrent.futures
import json
import os
import resource
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

SHORT, CROP = 256, 224


def prepare(path, draft):
    t0 = time.perf_counter()
    im = Image.open(path)
    if draft:
        # Asks libjpeg for the smallest DCT scale that keeps both sides >= the size given.
        w, h = im.size
        s = SHORT / min(w, h)
        im.draft("RGB", (int(w * s), int(h * s)))
    im = im.convert("RGB")
    im.load()
    t1 = time.perf_counter()
    w, h = im.size
    s = SHORT / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = im.size
    left, top = (w - CROP) // 2, (h - CROP) // 2
    im = im.crop((left, top, left + CROP, top + CROP))
    x = ((np.asarray(im, dtype=np.float32) - 127.0) / 128.0).transpose(2, 0, 1)
    return x, t1 - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--no-draft", action="store_true")
    args = ap.parse_args()
    files = sorted(
        os.path.join(r, f) for r, _, fs in os.walk(args.dir) for f in fs
        if f.lower().endswith((".jpg", ".jpeg"))
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    decode_s = 0.0
    out = []
    with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
        for i in range(0, len(files), args.batch):
            chunk = files[i:i + args.batch]
            got = list(pool.map(lambda p: prepare(p, not args.no_draft), chunk))
            decode_s += sum(d for _, d in got)
            x = np.stack([t for t, _ in got])
            (emb,) = sess.run(["embedding"], {"input": x})
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            out.append(emb)
    secs = time.perf_counter() - start
    print(json.dumps({
        "peer": "pil-draft+onnxruntime" if not args.no_draft else "pil+onnxruntime",
        "images": len(files),
        "seconds": round(secs, 2),
        "images_per_s": round(len(files) / secs, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "decode_ms_per_image": round(1000 * decode_s / max(1, len(files)), 2),
        "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
