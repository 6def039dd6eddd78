#!/usr/bin/env python3
"""Peer for `cargo bench --bench backends`: images/s through onnxruntime's own Python API.

Times `InferenceSession.run` on the same model, batch sizes and intra-op thread count as the
Rust benchmark, on a batch of the same shape (values do not change the speed of these models).
Setup: `pip install onnxruntime==1.31.1 numpy`.

Usage: benches/peers/ort_python.py [--model M] [--threads T] [--batches 1,8,64] [--seconds S]
       [--shape C,H,W]   (one image's input shape; `htg bench embed --python` passes its spec's)

Prints one line per batch size: `ort-python batch=B images/s=X (mean ms per call=Y, calls=N)`,
where images/s is B / (mean time per call), as criterion reports throughput.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def resolve_shape(model_path, sess, batch):
    """Input shape for `batch` images, taking H/W from the manifest where the graph leaves them."""
    inp = sess.get_inputs()[0]
    manifest = os.path.splitext(model_path)[0] + ".json"
    spec = {}
    if os.path.exists(manifest):
        with open(manifest) as f:
            spec = json.load(f)
    dims = list(inp.shape)
    layout = spec.get("layout", "NCHW")
    h, w = spec.get("height"), spec.get("width")
    if layout == "NCHW":
        rest = [dims[1], h or dims[2], w or dims[3]]
    else:
        rest = [h or dims[1], w or dims[2], dims[3]]
    if any(not isinstance(d, int) for d in rest):
        sys.exit(f"cannot tell the input shape of {model_path}: {dims}; add a manifest")
    return inp.name, [batch] + rest


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    default_model = os.path.join(root, "models", "emoji-scratch.onnx")
    if not os.path.exists(default_model):
        default_model = os.path.join(root, "tests", "fixtures", "models", "tiny.onnx")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.environ.get("HTG_BENCH_MODEL") or default_model)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("HTG_BENCH_THREADS", "1")))
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--seconds", type=float, default=3.0, help="measuring time per batch size")
    ap.add_argument("--shape", default=None, help="one image's input shape, e.g. 3,32,32")
    args = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    print(f"onnxruntime {ort.__version__}, model {os.path.basename(args.model)}, "
          f"intra_op_num_threads={args.threads}")
    rng = np.random.default_rng(0)
    for batch in [int(b) for b in args.batches.split(",")]:
        if args.shape:
            name = sess.get_inputs()[0].name
            shape = [batch] + [int(d) for d in args.shape.split(",")]
        else:
            name, shape = resolve_shape(args.model, sess, batch)
        x = rng.random(shape, dtype=np.float32)
        # Warm up for about a second, as criterion does.
        t_end = time.perf_counter() + 1.0
        while time.perf_counter() < t_end:
            sess.run(None, {name: x})
        times = []
        t_end = time.perf_counter() + args.seconds
        while time.perf_counter() < t_end or len(times) < 10:
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            times.append(time.perf_counter() - t0)
        mean = statistics.fmean(times)
        print(f"ort-python batch={batch} images/s={batch / mean:.1f} "
              f"(mean ms per call={mean * 1e3:.3f}, calls={len(times)})")


if __name__ == "__main__":
    main()
