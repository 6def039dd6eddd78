#!/usr/bin/env python3
"""hnswlib's side of scripts/bench/graph-qps.sh: one-thread knn_query QPS and recall@10 on a
data set directory, on an index built once (M=16, ef_construction=200, 2 threads) and saved.

Usage: hnswlib_qps.py DATASET_DIR EF[,EF..] SECONDS INDEX_FILE
"""
import os
import sys
import time

import hnswlib
import numpy as np

d, efs, secs, f = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], float(sys.argv[3]), sys.argv[4]
base = np.load(os.path.join(d, "base.npy"))
q = np.load(os.path.join(d, "queries.npy"))
gt = np.load(os.path.join(d, "gt.npy"))
p = hnswlib.Index(space="l2", dim=base.shape[1])
if os.path.exists(f):
    p.load_index(f, max_elements=base.shape[0])
else:
    t = time.time()
    p.init_index(max_elements=base.shape[0], ef_construction=200, M=16, random_seed=100)
    p.set_num_threads(2)
    p.add_items(base)
    print("built", time.time() - t, file=sys.stderr)
    p.save_index(f)
p.set_num_threads(1)
for ef in efs:
    p.set_ef(ef)
    for i in range(min(100, q.shape[0])):
        p.knn_query(q[i : i + 1], k=10)
    found, n, t = [], 0, time.time()
    while time.time() - t < secs:
        for i in range(q.shape[0]):
            labels, _ = p.knn_query(q[i : i + 1], k=10)
            if len(found) < q.shape[0]:
                found.append(labels[0])
        n += q.shape[0]
    qps = n / (time.time() - t)
    r = np.mean([len(set(a.tolist()) & set(gt[i, :10].tolist())) / 10 for i, a in enumerate(found)])
    print(f"hnswlib ef={ef} R@10={r:.4f} qps={qps:.0f}")
