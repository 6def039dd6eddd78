#!/usr/bin/env python3
"""One training step of htg's default F in PyTorch: the peer of `cargo bench -p htg-training
--bench step_vs_torch`.

The same network (3x3 stem, one ResNet basic block per stage at widths 16/32/64, stride-2
stages with a 1x1 projection shortcut, 4x4 average-pooled grid, linear to 64-d), the same
batch (P x K = 32 x 2 images of 32x32 RGB, synthetic pixels: the cost of a step does not
depend on them), the same losses (triplet loss on squared distances of l2-normalised
embeddings, margin 0.2) and the same optimiser (Adam, lr 1e-3) as htg-training's defaults.

  --method batchhard   F only: batch-hard mining on the detached distance matrix.
  --method htg         D (3 updates), then G against it, then F through G, as
                       htg_training::trainer::Trainer::htg_update does (G fed random triplets,
                       the default `input_mining`; real triplets at weight 1; D with 200 + 1
                       classes, as in the Rust bench).

Prints one line of JSON: {"method", "threads", "ms_per_step", "steps", "torch"}; ms_per_step
is the median of --repeats timed blocks of --steps steps each, after --warmup steps.

Setup: scripts/setup-torch.sh, then
  $HTG_CACHE_DIR/torch-venv/bin/python benches/peers/torch_step.py --threads 2 --method htg
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3(cin, cout, stride):
    c = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")
    return c


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3(cout, cout, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if cin != cout or stride != 1:
            sc = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            nn.init.kaiming_normal_(sc.weight, mode="fan_out", nonlinearity="relu")
            self.shortcut = nn.Sequential(sc, nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.shortcut is None else self.shortcut(x)
        return F.relu(y + s)


class FeatureNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), dim=64, size=32, grid=4):
        super().__init__()
        self.stem = conv3(3, widths[0], 1)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        blocks, c, r = [], widths[0], size
        for i, w in enumerate(widths):
            stride = 2 if i > 0 else 1
            if i > 0:
                r = (r + 1) // 2
            blocks.append(Block(c, w, stride))
            c = w
        self.blocks = nn.Sequential(*blocks)
        k = r // grid
        self.pool = nn.AvgPool2d(k, stride=k)
        self.head = nn.Linear(c * grid * grid, dim)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.pool(self.blocks(x))
        return self.head(torch.flatten(x, 1))


class Generator(nn.Module):
    def __init__(self, dim=64, hidden=256, max_shift=0.1):
        super().__init__()
        self.fc1 = nn.Linear(3 * dim, hidden)
        self.fc2 = nn.Linear(hidden, 3 * dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        self.max_shift = max_shift
        self.dim = dim

    def forward(self, a, p, n):
        x = torch.cat([a, p, n], 1)
        y = x + self.max_shift * torch.tanh(self.fc2(F.relu(self.fc1(x))))
        d = self.dim
        return tuple(F.normalize(y[:, i * d:(i + 1) * d], dim=1, eps=1e-6) for i in range(3))


class Discriminator(nn.Module):
    def __init__(self, dim=64, hidden=256, classes=200):
        super().__init__()
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, classes + 1)

    def forward(self, x):
        return self.out(F.relu(self.hidden(x)))


def l2n(x):
    return x / torch.sqrt((x * x).sum(1, keepdim=True) + 1e-12)


def sq(a, b):
    return ((a - b) ** 2).sum(1)


def triplet(a, p, n, m):
    return F.relu(sq(a, p) - sq(a, n) + m).mean()


def mine(labels, dist, hard, gen):
    """Per anchor: hardest positive and negative (batch-hard) or random ones (htg input)."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    pos = same & ~eye
    neg = ~same
    if hard:
        p = torch.where(pos, dist, torch.full_like(dist, -1.0)).argmax(1)
        n = torch.where(neg, dist, torch.full_like(dist, float("inf"))).argmin(1)
    else:
        r = torch.rand(dist.shape, generator=gen)
        p = torch.where(pos, r, torch.full_like(r, -1.0)).argmax(1)
        n = torch.where(neg, r, torch.full_like(r, -1.0)).argmax(1)
    a = torch.arange(len(labels))
    return a, p, n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=["batchhard", "htg"], default="batchhard")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--classes", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)

    P, K, margin, classes = 32, 2, 0.2, args.classes
    n_img = classes * K
    data = (torch.arange(n_img * 3 * 32 * 32, dtype=torch.int64) * 2654435761 % 1000).float()
    data = (data / 500.0 - 1.0).reshape(n_img, 3, 32, 32)
    labels_all = torch.arange(n_img) // K

    f = FeatureNet()
    opt_f = torch.optim.Adam(f.parameters(), lr=1e-3)
    g = Generator()
    d = Discriminator(classes=classes)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-2)
    f.train()

    def step():
        cls = torch.randperm(classes, generator=gen)[:P]
        idx = (cls[:, None] * K + torch.arange(K)[None, :]).reshape(-1)
        x = data[idx]
        labels = labels_all[idx]
        emb = l2n(f(x))
        with torch.no_grad():
            e = emb.detach()
            dist = ((e[:, None, :] - e[None, :, :]) ** 2).sum(2)
        a, p, n = mine(labels, dist, args.method == "batchhard", gen)
        if args.method == "batchhard":
            loss = triplet(emb[a], emb[p], emb[n], margin)
            opt_f.zero_grad(set_to_none=True)
            loss.backward()
            opt_f.step()
            return
        tri_labels = torch.cat([labels[a], labels[p], labels[n]])
        fake_labels = torch.full_like(tri_labels, classes)
        e = emb.detach()
        ra, rp, rn = e[a], e[p], e[n]
        with torch.no_grad():
            fake = torch.cat(g(ra, rp, rn), 0)
        real = torch.cat([ra, rp, rn], 0)
        for _ in range(3):
            loss_d = F.cross_entropy(d(real), tri_labels) + F.cross_entropy(d(fake), fake_labels)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        with torch.no_grad():  # D's p(fake) on real and generated, as htg logs it
            _ = F.softmax(d(real), 1)[:, classes].mean().item()
            _ = F.softmax(d(fake), 1)[:, classes].mean().item()
        ga, gp, gn = g(ra, rp, rn)
        loss_g = F.relu(sq(ga, gn) - sq(ga, gp) + 0.2).mean() + F.cross_entropy(
            d(torch.cat([ga, gp, gn], 0)), tri_labels
        )
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        fa, fp, fn = emb[a], emb[p], emb[n]
        ga, gp, gn = g(fa, fp, fn)
        loss_f = triplet(ga, gp, gn, margin) + triplet(fa, fp, fn, margin)
        opt_f.zero_grad(set_to_none=True)
        g.zero_grad(set_to_none=True)
        loss_f.backward()
        opt_f.step()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        times.append((time.perf_counter() - t0) * 1000.0 / args.steps)
    print(
        json.dumps(
            {
                "method": args.method,
                "threads": args.threads,
                "ms_per_step": statistics.median(times),
                "steps": args.steps * args.repeats,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
