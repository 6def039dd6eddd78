#!/usr/bin/env python3
"""Decode budget under hostile load: a normal client's latency while 8 clients send small PNGs
that decode to 6000x6000 (36 Mpixel, ~1 s of CPU each on the development machine).

Starts `htg serve` twice on loopback over an index of the fixture images: once with the default
configuration (large decodes take turns: `max_concurrent_large_decodes` = half the cores), once
with turns effectively off (`HTG__MAX_CONCURRENT_LARGE_DECODES=64`, the behaviour before the
budget). For each it measures the normal client alone (quiet), then beside the heavy clients,
and prints p50/p99 and the ratio of loaded p99 to quiet p99 (target <= 3).

Usage: scripts/bench/decode_budget.py [--seconds 20] [--heavy 8] [--htg PATH]
Only the Python standard library; needs a built htg.
"""
import argparse
import http.client
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def heavy_png(side=6000):
    """An all-white RGB PNG of side x side: ~36 Mpixel that compresses to a few tens of KB."""
    row = b"\x00" + b"\xff" * (3 * side)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    chunk = lambda t, b: struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def start(htg, index, env_extra):
    env = dict(os.environ, **env_extra)
    p = subprocess.Popen([htg, "serve", "--index", index, "--addr", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    for line in p.stdout:
        if "listening on" in line:
            return p, line.strip().split("http://")[1]
    raise SystemExit("server did not start")


def client(addr, body, stop, lat, errors):
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    while not stop.is_set():
        t = time.perf_counter()
        try:
            conn.request("POST", "/search?k=10", body=body, headers={"Content-Type": "image/png"})
            r = conn.getresponse()
            r.read()
            if r.status >= 500:
                errors.append(r.status)
            elif lat is not None:
                lat.append(time.perf_counter() - t)
        except Exception as e:  # a dropped connection counts and is reopened
            errors.append(str(e))
            conn = http.client.HTTPConnection(host, int(port), timeout=120)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else float("nan")


def measure(addr, small, big, seconds, heavy):
    stop = threading.Event()
    lat, errs, heavy_lat, heavy_errs = [], [], [], []
    threads = [threading.Thread(target=client, args=(addr, big, stop, heavy_lat, heavy_errs))
               for _ in range(heavy)]
    for t in threads:
        t.start()
    if heavy:
        time.sleep(2)  # let the heavy clients fill the server
    normal = threading.Thread(target=client, args=(addr, small, stop, lat, errs))
    normal.start()
    time.sleep(seconds)
    stop.set()
    for t in threads + [normal]:
        t.join()
    return {"n": len(lat), "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "errors": len(errs),
            "heavy_done": len(heavy_lat), "heavy_5xx_or_errors": len(heavy_errs),
            "heavy_p50_ms": pct(heavy_lat, 0.5)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--heavy", type=int, default=8)
    ap.add_argument("--htg", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug", "htg"))
    ap.add_argument("--json")
    a = ap.parse_args()
    small = open(os.path.join(ROOT, "tests/fixtures/images/1f49c-google.png"), "rb").read()
    big = heavy_png()
    work = tempfile.mkdtemp()
    try:
        index = os.path.join(work, "idx")
        subprocess.run([a.htg, "index", os.path.join(ROOT, "tests/fixtures/images"), "--index", index,
                        "--model", os.path.join(ROOT, "models/emoji-scratch.onnx")], check=True,
                       stdout=subprocess.DEVNULL)
        results = {}
        for name, env in [("turns (default)", {}),
                          ("no turns", {"HTG__MAX_CONCURRENT_LARGE_DECODES": "64"})]:
            p, addr = start(a.htg, index, env)
            try:
                quiet = measure(addr, small, big, a.seconds, 0)
                loaded = measure(addr, small, big, a.seconds, a.heavy)
            finally:
                p.terminate()
                p.wait()
            results[name] = {"quiet": quiet, "loaded": loaded,
                             "p99_ratio": loaded["p99_ms"] / quiet["p99_ms"]}
        print(f"heavy image: 6000x6000 PNG, {len(big)} bytes; {a.heavy} heavy clients; {a.seconds} s per phase; {os.cpu_count()} cores")
        print("| configuration | quiet p50 ms | quiet p99 ms | loaded p50 ms | loaded p99 ms | loaded/quiet p99 | normal requests (loaded) | heavy requests done | heavy p50 ms | 5xx/errors |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, r in results.items():
            q, l = r["quiet"], r["loaded"]
            print(f"| {name} | {q['p50_ms']:.2f} | {q['p99_ms']:.2f} | {l['p50_ms']:.2f} | {l['p99_ms']:.2f} | "
                  f"{r['p99_ratio']:.2f} | {l['n']} | {l['heavy_done']} | {l['heavy_p50_ms']:.0f} | "
                  f"{q['errors'] + l['errors'] + l['heavy_5xx_or_errors']} |")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
