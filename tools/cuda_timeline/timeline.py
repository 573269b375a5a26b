#!/usr/bin/env python3
"""Reads a kernel timeline (kernel_timeline.cpp) of a decode run and prints, for one
graph-replayed token: its span, the span of every layer, and the kernels of chosen
layers with start, end and duration in microseconds from the layer's first kernel.

  timeline.py t.csv [--token -1] [--layers 10,11]

Tokens are split at the embedding kernel, layers at every second hc_pre launch (the
attention and MoE sublayers each start with one)."""
import argparse
import csv
import re
import subprocess


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        plain = out.split("\n")
    except (OSError, subprocess.CalledProcessError):
        plain = names
    short = {}
    for mangled, d in zip(names, plain):
        d = re.sub(r"ds4::\(anonymous namespace\)::|ds4::", "", d)
        short[mangled] = re.sub(r"\(.*$", "", d)[:60]
    return short


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--token", type=int, default=-1, help="which graph-replayed token (default: the last)")
    ap.add_argument("--layers", default="", help="comma list of layers to list kernel by kernel")
    args = ap.parse_args()
    rows = list(csv.DictReader(open(args.csv)))
    names = demangle(sorted({r["name"] for r in rows}))
    kernels = []
    for r in rows:
        if int(r["node"]) == 0:
            continue  # not launched from a graph
        kernels.append((int(r["start"]), int(r["end"]), r["stream"], r["grid"], r["block"], names[r["name"]]))
    kernels.sort()
    tokens, current = [], []
    for k in kernels:
        if k[5].startswith("embed_kernel") and current:
            tokens.append(current)
            current = []
        current.append(k)
    if current:
        tokens.append(current)
    if not tokens:
        print("no graph-launched kernels")
        return
    print("graph tokens:", len(tokens), "kernels each:", [len(t) for t in tokens])
    t = tokens[args.token]
    t0, t1 = t[0][0], max(k[1] for k in t)
    print("token span %.1f us" % ((t1 - t0) / 1e3))
    starts = [i for i, k in enumerate(t) if k[5].startswith("void hc_pre") or k[5].startswith("hc_pre")]
    layers = [(starts[i], starts[i + 2] if i + 2 < len(starts) else len(t)) for i in range(0, len(starts) - 1, 2)]
    spans = [((t[hi][0] if hi < len(t) else t1) - t[lo][0]) / 1e3 for lo, hi in layers]
    print("layer spans (us):", " ".join("%.0f" % s for s in spans))
    for layer in [int(x) for x in args.layers.split(",") if x]:
        lo, hi = layers[layer]
        base = t[lo][0]
        print("--- layer %d (%.1f us)" % (layer, spans[layer]))
        for k in t[lo:min(hi + 1, len(t))]:
            print("%7.2f %7.2f %6.2f s%-4s grid %-5s block %-5s %s" % ((k[0] - base) / 1e3, (k[1] - base) / 1e3,
                                                                       (k[1] - k[0]) / 1e3, k[2], k[3], k[4], k[5]))


if __name__ == "__main__":
    main()
