#!/usr/bin/env python3
"""Emoji: where the unseen-class misses are, by emoji.json category and subcategory.

R@1 on the 956 unseen emoji is one number; this script says which kinds of emoji it is lost
on, and how the class split (by codepoint: training classes first) spreads the kinds between
training and test. It reads the per-query top-1 hits that every run's `metrics.json` records
(`test_top1_hits`, in test-class order) and rebuilds the class order the way
`htg_training::data` does (emoji with both a Google and a Twitter 64 px image, sorted by
`unified`, the first half training), so it needs no model and no runtime.

With `--pairs eval.json` (from `htg eval --model M --data emoji --hard-pairs 1000 --json
eval.json`, which lists every miss), it also says how many misses retrieved a *sibling*:
an emoji of the same subcategory, or one whose name differs only by man/woman/person or
skin tone.

    python3 scripts/diag/emoji_categories.py models/emoji-scratch.metrics.json [more metrics.json]
    python3 scripts/diag/emoji_categories.py runs/x/metrics.json --pairs eval.json

Reads `$HTG_DATA_DIR/emoji` (default `data/emoji`; `scripts/fetch-data.sh emoji`).
"""
import argparse
import collections
import json
import os
import re


def classes(root):
    entries = json.load(open(os.path.join(root, "emoji.json")))
    ok = [
        e
        for e in entries
        if e.get("has_img_google")
        and e.get("has_img_twitter")
        and os.path.isfile(os.path.join(root, "google", "64", e["image"]))
        and os.path.isfile(os.path.join(root, "twitter", "64", e["image"]))
    ]
    ok.sort(key=lambda e: e["unified"])
    half = len(ok) // 2
    return ok[:half], ok[half:]


GENDER = re.compile(r"\b(man|woman|men|women|person|people|boy|girl|male|female|adult)\b")


def stem(name):
    """A name with its gender words and skin tones taken out: siblings share a stem."""
    name = (name or "").lower().replace("_", " ").replace("-", " ")
    name = re.sub(r"\b(light|medium|dark|medium-light|medium-dark)\b ?skin tone", "", name)
    return re.sub(r"\s+", " ", GENDER.sub("", name)).strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("metrics", nargs="+", help="metrics.json files (hits pooled)")
    ap.add_argument("--pairs", help="eval.json of htg eval --hard-pairs (every miss)")
    ap.add_argument("--top", type=int, default=25, help="subcategories to list")
    args = ap.parse_args()
    root = os.path.join(os.environ.get("HTG_DATA_DIR", "data"), "emoji")
    train, test = classes(root)
    n = collections.Counter()
    hit = collections.Counter()
    for path in args.metrics:
        hits = json.load(open(path))["test_top1_hits"]
        if len(hits) != len(test):
            raise SystemExit(f"{path}: {len(hits)} hits for {len(test)} test classes")
        for e, h in zip(test, hits):
            for key in (e["category"], e["category"] + " / " + e["subcategory"]):
                n[key] += 1
                hit[key] += bool(h)
    runs = len(args.metrics)
    train_cat = collections.Counter(e["category"] for e in train)
    test_cat = collections.Counter(e["category"] for e in test)
    total = sum(hit[c] for c in test_cat) / sum(n[c] for c in test_cat)
    print(f"R@1 over {runs} run(s): {total:.3f}\n")
    print("| category | training classes | test classes | test R@1 | share of misses |")
    print("|---|---|---|---|---|")
    misses = sum(n[c] - hit[c] for c in test_cat)
    for c in sorted(set(train_cat) | set(test_cat), key=lambda c: -test_cat[c]):
        r = f"{hit[c] / n[c]:.3f}" if n[c] else "–"
        share = f"{(n[c] - hit[c]) / misses:.2f}" if n[c] else "–"
        print(f"| {c} | {train_cat[c]} | {test_cat[c]} | {r} | {share} |")
    subs = [k for k in n if " / " in k]
    subs.sort(key=lambda k: -(n[k] - hit[k]))
    print(f"\nSubcategories with the most misses (test classes, R@1):\n")
    print("| subcategory | test classes | test R@1 | misses per run |")
    print("|---|---|---|---|")
    for k in subs[: args.top]:
        print(f"| {k} | {n[k] // runs} | {hit[k] / n[k]:.3f} | {(n[k] - hit[k]) / runs:.1f} |")
    if args.pairs:
        by_name = {}
        for e in test:
            by_name[e.get("short_name") or e["unified"]] = e
        pairs = json.load(open(args.pairs))["hard_pairs"]["pairs"]
        same_sub = same_stem = total_miss = 0
        for p in pairs:
            a, b = by_name.get(p["from_name"]), by_name.get(p["to_name"])
            if a is None or b is None:
                raise SystemExit(f"unknown class in {p}")
            c = p["count"]
            total_miss += c
            same_sub += c * (a["subcategory"] == b["subcategory"])
            same_stem += c * (stem(a.get("short_name")) == stem(b.get("short_name")))
        print(
            f"\nMisses: {total_miss}; retrieved an emoji of the same subcategory: {same_sub} "
            f"({same_sub / total_miss:.2f}); one whose name differs only by gender words "
            f"or skin tone: {same_stem} ({same_stem / total_miss:.2f})"
        )


if __name__ == "__main__":
    main()
