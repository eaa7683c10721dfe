#!/usr/bin/env python3
"""Inference speed and memory: bundled models vs the seed's network shape.

For SR and DN, runs ``run_inference_on_real``'s model step on one 416x416 image with
(a) the bundled ONNX model (when present) and (b) the seed's network shape: an RRDB generator
with 32 filters, 4 RRDB blocks (3 residual dense blocks of 5 convolutions each, growth 32),
random weights, built here as an ONNX graph. Each configuration runs in a fresh subprocess so
its peak RSS is its own. Prints a table with seconds per image, peak RSS and the speed ratio.

Usage: python benchmarks/bench_inference.py [--threads 2] [--repeats 3]
Targets (issue 2): bundled >= 10x faster than the seed shape, < 1 s per SR image on 2 cores,
peak RSS < 1 GB.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def seed_rrdb_onnx(path: Path, task: str, nf: int = 32, nb: int = 4, gc: int = 32,
                   seed: int = 0) -> tuple[Path, int]:
    """Write an RRDB generator of the seed's shape with random weights; return (path, params)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    count = [0]

    def conv(x, cin, cout, act=True):
        i = count[0]
        count[0] += 1
        w = (rng.standard_normal((cout, cin, 3, 3)) * (0.1 / np.sqrt(cin * 9))).astype(np.float32)
        b = np.zeros(cout, np.float32)
        inits.extend([numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")])
        y = f"c{i}"
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [y], pads=[1, 1, 1, 1]))
        if act:
            nodes.append(helper.make_node("LeakyRelu", [y], [y + "a"], alpha=0.2))
            return y + "a"
        return y

    inits.append(numpy_helper.from_array(np.array(0.2, np.float32), "k02"))

    def scaled_add(x, res, tag):
        nodes.append(helper.make_node("Mul", [res, "k02"], [tag + "m"]))
        nodes.append(helper.make_node("Add", [x, tag + "m"], [tag]))
        return tag

    def rdb(x, tag):
        feats = [x]
        cin = nf
        for k in range(4):
            cat = x if k == 0 else f"{tag}cat{k}"
            if k:
                nodes.append(helper.make_node("Concat", feats, [cat], axis=1))
            feats.append(conv(cat, cin, gc))
            cin += gc
        nodes.append(helper.make_node("Concat", feats, [f"{tag}cat4"], axis=1))
        out = conv(f"{tag}cat4", cin, nf, act=False)
        return scaled_add(x, out, tag + "o")

    fea = conv("rate", 1, nf, act=False)
    x = fea
    for b in range(nb):
        y = x
        for r in range(3):
            y = rdb(y, f"b{b}r{r}")
        x = scaled_add(x, y, f"b{b}o")
    trunk = conv(x, nf, nf, act=False)
    nodes.append(helper.make_node("Add", [fea, trunk], ["body"]))
    h = "body"
    if task == "SR":
        up = conv(h, nf, nf * 4, act=False)
        nodes.append(helper.make_node("DepthToSpace", [up], ["ps"], blocksize=2, mode="CRD"))
        nodes.append(helper.make_node("LeakyRelu", ["ps"], ["psa"], alpha=0.2))
        h = "psa"
    h = conv(h, nf, nf)
    last = conv(h, nf, 1, act=False)
    nodes.append(helper.make_node("Identity", [last], ["out"]))
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "seed_rrdb",
                              [vi("rate", TensorProto.FLOAT, ["N", 1, "H", "W"])],
                              [vi("out", TensorProto.FLOAT, ["N", 1, "H2", "W2"])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in {"task": task, "scale": "2" if task == "SR" else "1", "version": "seed-shape"
                 }.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(model, path)
    params = int(sum(np.prod(t.dims) for t in inits))
    return path, params


CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from xmm_enhance.inference import load_model
which, path, threads, repeats = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
m = load_model(which, path, threads=threads)
rng = np.random.default_rng(0)
rate = (rng.poisson(0.3, (416, 416)) / 2e4).astype(np.float32)
mask = np.ones((416, 416), np.float32)
m.predict(rate, mask, 20e3)  # warm-up
t = []
for _ in range(repeats):
    t0 = time.perf_counter(); m.predict(rate, mask, 20e3); t.append(time.perf_counter() - t0)
print(json.dumps({"s": float(np.median(t)),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(which, path, threads, repeats):
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), which, str(path),
                          str(threads), str(repeats)], capture_output=True, text=True,
                         timeout=1800)
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed-repeats", type=int, default=1)
    args = ap.parse_args(argv)
    from xmm_enhance.inference import default_model_path

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for which in ("SR", "DN"):
            seed_path, nparam = seed_rrdb_onnx(Path(tmp) / f"seed_{which}.onnx", which)
            seed = measure(which, seed_path, args.threads, args.seed_repeats)
            rows.append((which, f"seed RRDB shape ({nparam / 1e6:.2f} M params)", seed, None))
            bundled = default_model_path(which)
            if bundled.exists():
                import onnx
                n = sum(int(np.prod(t.dims)) for t in onnx.load(bundled).graph.initializer)
                ours = measure(which, bundled, args.threads, args.repeats)
                rows.append((which, f"bundled {bundled.name} ({n / 1e6:.2f} M params)", ours,
                             seed["s"] / ours["s"]))
            else:
                rows.append((which, f"bundled {bundled.name}: MISSING", None, None))
    print(f"\nInference on one 416x416 image, onnxruntime CPU, {args.threads} threads\n")
    print(f"{'task':4} | {'network':44} | {'s/image':>8} | {'peak RSS MB':>11} | "
          f"{'speed-up vs seed':>16}")
    print("-" * 96)
    for which, name, r, ratio in rows:
        s = f"{r['s']:8.3f}" if r else f"{'-':>8}"
        m = f"{r['rss_mb']:11.0f}" if r else f"{'-':>11}"
        q = f"{ratio:15.1f}x" if ratio else f"{'-':>16}"
        print(f"{which:4} | {name:44} | {s} | {m} | {q}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
