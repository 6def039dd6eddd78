#!/usr/bin/env python3
"""Fashion-MNIST: does F learn the training classes, and does that transfer to unseen ones?

Leave-one-out R@1 and MAP@R on the 10k test images, split into the training classes 0-4
(seen: t-shirt, trouser, pullover, dress, coat; held-out test images) and the unseen
classes 5-9 (sandal, shirt, sneaker, bag, ankle boot), for raw pixels (mean-centred,
l2-normalised, as `htg eval --raw-pixels`) and for each exported model given, run by
onnxruntime's Python API with the preprocessing read from the model's `htg.*` metadata.

The metric code here is an independent re-implementation (numpy), not htg's: on the unseen
classes its raw-pixel numbers must equal `htg eval --raw-pixels --data fashion-mnist`.

    python3 scripts/diag/fashion_seen_unseen.py runs/fmnist-*/model.onnx

Needs numpy and onnxruntime, and `scripts/fetch-data.sh fashion-mnist` (data/fashion-mnist or
$HTG_DATA_DIR/fashion-mnist).
"""
import gzip
import os
import sys

import numpy as np
import onnxruntime as ort

root = os.environ.get("HTG_DATA_DIR", "data")


def idx(name):
    b = gzip.open(os.path.join(root, "fashion-mnist", name)).read()
    if b[2:4] == b"\x08\x03":
        n = int.from_bytes(b[4:8], "big")
        return np.frombuffer(b[16:], np.uint8).reshape(n, 28, 28)
    return np.frombuffer(b[8:], np.uint8)


def metrics(e, y):
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1)
    r1 = float((y[order[:, 0]] == y).mean())
    r = np.bincount(y)[y] - 1
    aps = []
    for i in range(len(y)):
        rel = y[order[i, : r[i]]] == y[i]
        prec = np.cumsum(rel) / np.arange(1, r[i] + 1)
        aps.append((prec * rel).sum() / r[i])
    return r1, float(np.mean(aps))


def embed(model, x):
    s = ort.InferenceSession(model)
    m = s.get_modelmeta().custom_metadata_map
    scale = float(m["htg.scale"])
    mean = float(m["htg.mean"].split(",")[0])
    std = float(m["htg.std"].split(",")[0])
    t = ((x.astype(np.float32) * scale - mean) / std)[:, None]
    out = np.concatenate(
        [s.run(None, {m["htg.input_name"]: t[i : i + 500]})[0] for i in range(0, len(t), 500)]
    )
    return out.reshape(len(out), -1)


def main():
    x_all = idx("t10k-images-idx3-ubyte.gz")
    y_all = idx("t10k-labels-idx1-ubyte.gz").astype(np.int64)
    print("| split | model | R@1 | MAP@R |\n|---|---|---|---|")
    for split, classes in [("seen 0-4", range(0, 5)), ("unseen 5-9", range(5, 10))]:
        mask = np.isin(y_all, list(classes))
        x, y = x_all[mask], y_all[mask]
        raw = x.reshape(len(x), -1).astype(np.float32)
        raw -= raw.mean(0)
        rows = [("raw pixels", metrics(raw, y))]
        rows += [(m, metrics(embed(m, x), y)) for m in sys.argv[1:]]
        for name, (r1, mapr) in rows:
            print(f"| {split} | {name} | {r1:.3f} | {mapr:.3f} |")


if __name__ == "__main__":
    main()
