#!/usr/bin/env python3
"""Peers of `htg bench index`: hnswlib, faiss-cpu (IndexHNSWFlat) and usearch on the same data.

Reads a data set directory (base.npy, queries.npy, gt.npy; `htg bench dataset ...` writes one),
builds each library's HNSW at the same M / ef_construction grid, searches at the same ef grid,
and writes the JSON schema `htg-bench-index/1` that `htg bench index` writes, so that
`htg bench plot htg.json peers.json` draws and compares them together.

Each build runs in a child process (this script with --one-point), as htg's do, so peak memory
(VmHWM) is per build. Definitions match htg's (ann/src/stats.rs, ann/src/hnsw.rs):
- recall@k: mean overlap of the first k ids with the first k true ids;
- QPS 1t: one query per call on one thread, repeated until --min-seconds; latency percentiles
  from those calls (nearest rank). Each call crosses from Python into C++: a few microseconds
  that htg's Rust calls do not pay, included here as a user of these libraries pays it;
- QPS all: the whole query set in one batch call on --threads threads;
- build: wall time of adding every base vector with --threads threads;
- disk: size of the library's own saved index.

Setup: scripts/setup-peers.sh (pinned hnswlib, faiss-cpu, usearch, numpy in a venv).
Usage: ann_peers.py --dataset DIR --json OUT [--libraries hnswlib,faiss,usearch] [--m 16]
       [--ef-construction 200] [--ef 10,16,32,64,128,256] [--threads N] [--min-seconds 0.5]
"""

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

K = 10
LIBRARIES = ("hnswlib", "faiss", "usearch")
PACKAGES = {"hnswlib": "hnswlib", "faiss": "faiss-cpu", "usearch": "usearch"}


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def peak_rss_mib():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child would report
    # its parent's peak (the parent holds the data set while it waits).
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_dataset(d):
    base = np.load(os.path.join(d, "base.npy"))
    queries = np.load(os.path.join(d, "queries.npy"))
    gt = np.load(os.path.join(d, "gt.npy"))
    for name, a, dt in (("base", base, np.float32), ("queries", queries, np.float32), ("gt", gt, np.int32)):
        if a.dtype != dt or a.ndim != 2:
            sys.exit(f"error: {name}.npy must be a 2-D {np.dtype(dt).name} array, got {a.dtype} {a.shape}")
    if base.shape[1] != queries.shape[1] or gt.shape[0] != queries.shape[0] or gt.shape[1] < K:
        sys.exit("error: base, queries and gt shapes disagree")
    return np.ascontiguousarray(base), np.ascontiguousarray(queries), gt


def recall(found, gt, k):
    hits = 0
    for f, t in zip(found, gt):
        hits += len(set(int(x) for x in f[:k]) & set(int(x) for x in t[:k]))
    return hits / (len(found) * k)


def percentile(values, p):
    v = sorted(values)
    if not v:
        return 0
    rank = int(np.ceil(p / 100.0 * len(v)))
    return v[min(max(rank, 1), len(v)) - 1]


class Hnswlib:
    def __init__(self, dim, n, m, efc, threads):
        import hnswlib

        self.idx = hnswlib.Index(space="l2", dim=dim)
        self.idx.init_index(max_elements=n, ef_construction=efc, M=m, random_seed=100)
        self.threads = threads

    def build(self, base):
        self.idx.set_num_threads(self.threads)
        self.idx.add_items(base, np.arange(len(base)))

    def set_ef(self, ef):
        self.idx.set_ef(ef)

    def one(self, q):
        return self.idx.knn_query(q, k=K, num_threads=1)[0][0]

    def batch(self, qs, threads):
        return self.idx.knn_query(qs, k=K, num_threads=threads)[0]

    def save(self, path):
        self.idx.save_index(path)


class Faiss:
    def __init__(self, dim, n, m, efc, threads):
        import faiss

        self.faiss = faiss
        self.idx = faiss.IndexHNSWFlat(dim, m)
        self.idx.hnsw.efConstruction = efc
        self.threads = threads

    def build(self, base):
        self.faiss.omp_set_num_threads(self.threads)
        self.idx.add(base)

    def set_ef(self, ef):
        self.idx.hnsw.efSearch = ef

    def one(self, q):
        return self.idx.search(q, K)[1][0]

    def batch(self, qs, threads):
        self.faiss.omp_set_num_threads(threads)
        out = self.idx.search(qs, K)[1]
        self.faiss.omp_set_num_threads(1)
        return out

    def serial_mode(self):
        self.faiss.omp_set_num_threads(1)

    def save(self, path):
        self.faiss.write_index(self.idx, path)


class Usearch:
    def __init__(self, dim, n, m, efc, threads):
        from usearch.index import Index

        # f32 storage: usearch's default may quantise, which would not be the same index.
        self.idx = Index(ndim=dim, metric="l2sq", dtype="f32", connectivity=m, expansion_add=efc)
        self.threads = threads

    def build(self, base):
        self.idx.add(np.arange(len(base)), base, threads=self.threads)

    def set_ef(self, ef):
        self.idx.expansion_search = ef

    def one(self, q):
        return self.idx.search(q[0], K, threads=1).keys

    def batch(self, qs, threads):
        return self.idx.search(qs, K, threads=threads).keys

    def save(self, path):
        self.idx.save(path)


ENGINES = {"hnswlib": Hnswlib, "faiss": Faiss, "usearch": Usearch}


def one_point(args):
    """Builds one library at one (M, efc), searches the ef grid; prints a BuildResult."""
    base, queries, gt = load_dataset(args.dataset)
    rss_before = rss_mib()
    eng = ENGINES[args.library](base.shape[1], len(base), args.m, args.ef_construction, args.threads)
    t = time.perf_counter()
    eng.build(base)
    build_s = time.perf_counter() - t
    size = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.bin")
        eng.save(path)
        size = os.path.getsize(path)
    if hasattr(eng, "serial_mode"):
        eng.serial_mode()
    searches = []
    nq = len(queries)
    rows = [queries[i : i + 1] for i in range(nq)]
    for ef in args.ef:
        ef = max(ef, K)
        eng.set_ef(ef)
        for r in rows[:100]:
            eng.one(r)
        found = []
        lat = []
        answered = 0
        start = time.perf_counter()
        while True:
            for r in rows:
                t0 = time.perf_counter_ns()
                ids = eng.one(r)
                lat.append(time.perf_counter_ns() - t0)
                if len(found) < nq:
                    found.append(ids)
            answered += nq
            if time.perf_counter() - start >= args.min_seconds:
                break
        qps_1t = answered / (time.perf_counter() - start)
        answered = 0
        start = time.perf_counter()
        while True:
            eng.batch(queries, args.threads)
            answered += nq
            if time.perf_counter() - start >= args.min_seconds:
                break
        qps_all = answered / (time.perf_counter() - start)
        searches.append(
            {
                "ef": ef,
                "recall_at_1": recall(found, gt, 1),
                "recall_at_10": recall(found, gt, K),
                "qps_1t": qps_1t,
                "qps_all": qps_all,
                "p50_us": percentile(lat, 50) / 1000.0,
                "p95_us": percentile(lat, 95) / 1000.0,
                "p99_us": percentile(lat, 99) / 1000.0,
            }
        )
    print(
        json.dumps(
            {
                "library": args.library,
                "library_version": importlib.metadata.version(PACKAGES[args.library]),
                "engine": f"{args.library} (Python package {PACKAGES[args.library]})",
                "distance": "l2sq",
                "m": args.m,
                "ef_construction": args.ef_construction,
                "build_s": build_s,
                "index_bytes": size,
                "peak_rss_mib": peak_rss_mib(),
                "rss_before_build_mib": rss_before,
                "searches": searches,
            }
        )
    )


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            ram_kib = int(f.readline().split()[1])
        with open("/proc/loadavg") as f:
            load = [float(x) for x in f.read().split()[:3]]
    except OSError:
        ram_kib, load = 0, []
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "ram_gib": ram_kib / (1024.0 * 1024.0),
        "os": f"{platform.system().lower()} {platform.machine()}",
        "load_avg": load,
    }


def git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


def csv_ints(s):
    return [int(x) for x in s.split(",") if x]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--json")
    ap.add_argument("--libraries", default=",".join(LIBRARIES))
    ap.add_argument("--m", type=csv_ints, default=[16])
    ap.add_argument("--ef-construction", type=csv_ints, default=[200])
    ap.add_argument("--ef", type=csv_ints, default=[10, 16, 32, 64, 128, 256])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--min-seconds", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1, help="recorded only: the data set fixes the data")
    ap.add_argument("--one-point", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--library", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_point:
        args.m, args.ef_construction = args.m[0], args.ef_construction[0]
        one_point(args)
        return
    libs = [x for x in args.libraries.split(",") if x]
    bad = [x for x in libs if x not in LIBRARIES]
    if bad:
        sys.exit(f"error: unknown libraries {bad} (choose from {', '.join(LIBRARIES)})")
    if any(m < 2 or m > 256 for m in args.m):
        sys.exit("error: M must be within 2..=256")
    if not args.json:
        sys.exit("error: --json is required")
    base, queries, _ = load_dataset(args.dataset)
    meta_path = os.path.join(args.dataset, "dataset.json")
    name = os.path.basename(os.path.normpath(args.dataset))
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            name = json.load(f).get("name", name)
    norms = np.linalg.norm(np.concatenate([base, queries]), axis=1)
    info = {
        "name": name,
        "n": int(base.shape[0]),
        "dim": int(base.shape[1]),
        "queries": int(queries.shape[0]),
        "normalized": bool(np.all(np.abs(norms - 1.0) < 1e-3)),
    }
    del base, queries
    report = {
        "schema": "htg-bench-index/1",
        "dataset": info,
        "machine": machine(),
        "run": {
            "tool": "ann_peers.py",
            "version": "1",
            "git_commit": git_commit(),
            "seed": args.seed,
            "k": K,
            "threads": args.threads,
            "min_seconds": args.min_seconds,
            "command": ["benches/peers/ann_peers.py"] + sys.argv[1:],
            "unix_time": int(time.time()),
        },
        "builds": [],
    }
    efs = ",".join(str(e) for e in args.ef)
    for lib in libs:
        for m in args.m:
            for efc in args.ef_construction:
                print(f"{lib} M={m} efc={efc} ...", file=sys.stderr, flush=True)
                cmd = [
                    sys.executable, os.path.abspath(__file__), "--one-point", "--library", lib,
                    "--dataset", args.dataset, "--m", str(m), "--ef-construction", str(efc),
                    "--ef", efs, "--threads", str(args.threads), "--min-seconds", str(args.min_seconds),
                ]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"error: {lib} M={m} efc={efc} failed: {out.stderr.strip().splitlines()[-1:]}")
                b = json.loads(out.stdout.strip().splitlines()[-1])
                best = max(s["recall_at_10"] for s in b["searches"])
                print(f"    built in {b['build_s']:.2f} s, peak {b['peak_rss_mib']:.0f} MiB; best R@10 {best:.4f}", file=sys.stderr)
                report["builds"].append(b)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
