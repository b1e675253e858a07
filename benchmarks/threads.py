#!/usr/bin/env python3
"""Training on a shared CPU: the demo's training time with and without a competing CPU-bound process, before
and after the thread choice of issue 11 item 5 (threads from the load + OpenMP's passive wait policy).

    scripts/env.sh .venv/bin/python benchmarks/threads.py [--epochs 2] [--samples 2048] [--size 32]
        [--settle 70] [--out out/bench/threads.json]

Four runs, each training the same small demo cube (core `train`, one fresh process per run, so that OpenMP
starts with the run's environment):
- "before": THREADS = all CPUs, OpenMP's default (active) wait policy: what train did before the change;
- "after": THREADS = 0 (chosen from the load average at the start), OMP_WAIT_POLICY=PASSIVE (the plugin
  sets it at load);
each once on the machine as it is and once while one CPU-bound process (a Python busy loop) runs beside
it. Before the loaded runs the script waits --settle seconds so the 1-minute load average sees the
competitor, as it would on a desktop where the other work already runs. Prints the seconds per run, the
ratios loaded / idle for both, and after / before under load; the load average is printed with each run.
Run it alone: other heavy jobs make the "idle" runs loaded too.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
cfg = json.loads(sys.argv[2])
if cfg["passive"]:
    from ismoe_qgis.threads import passive_openmp_wait
    passive_openmp_wait()
import torch
from ismoe_qgis.core_callbacks import Callbacks
from ismoe_qgis.data.cube import Cube
from ismoe_qgis.model.train import TrainConfig, train
cube = Cube.load(cfg["cube"])
tc = TrainConfig(epochs=cfg["epochs"], samples_per_epoch=cfg["samples"], val_samples=1000, device="cpu", seed=1,
                 threads=cfg["threads"], val_start=cfg["val_start"], test_start=cfg["test_start"])
logs = []
t0 = time.time()
train(cube, cfg["out"], "ismoe", tc, None, Callbacks(log=logs.append))
print(json.dumps({"seconds": time.time() - t0, "threads": torch.get_num_threads(),
                  "log": [l for l in logs if l.startswith("CPU threads")]}))
"""


def make_cube(folder, size):
    sys.path.insert(0, REPO)
    from ismoe_qgis.data import demo
    from ismoe_qgis.data.prepare import prepare_dataset
    region = os.path.join(folder, "region")
    demo.generate_demo(region, size=size, years=2, seed=42)
    with open(os.path.join(region, "demo.json")) as f:
        man = json.load(f)
    factors = {f: [(v, os.path.join(region, man["layers"][v])) for v in vs] for f, vs in man["factors"].items()}
    cube = prepare_dataset(factors, os.path.join(region, man["target"]), patch_size=7, seq_len=14)
    path = os.path.join(folder, "cube.npz")
    cube.save(path)
    dates = cube.dates
    return path, str(dates[int(len(dates) * 0.7)]), str(dates[int(len(dates) * 0.85)])


def run_child(cfg):
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", CHILD, REPO, json.dumps(cfg)], env=env, capture_output=True,
                         text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--settle", type=float, default=70.0, help="seconds for the load average to see the competitor")
    ap.add_argument("--out", default=os.path.join(REPO, "out", "bench", "threads.json"))
    a = ap.parse_args(argv)
    cpus = len(os.sched_getaffinity(0))
    work = tempfile.mkdtemp(prefix="ismoe_threads_")
    cube, val_start, test_start = make_cube(work, a.size)
    base = {"cube": cube, "epochs": a.epochs, "samples": a.samples, "val_start": val_start, "test_start": test_start}
    variants = {"before": {"threads": cpus, "passive": False}, "after": {"threads": 0, "passive": True}}
    res = {"cpus": cpus, "config": vars(a), "runs": {}}
    for which, v in variants.items():                       # idle machine
        la = os.getloadavg()[0]
        r = run_child({**base, **v, "out": os.path.join(work, f"{which}_idle.pt")})
        res["runs"][f"{which}/idle"] = {**r, "load_at_start": round(la, 2)}
        print(f"{which:6s} idle  : {r['seconds']:7.1f} s, {r['threads']} threads, load {la:.2f}", flush=True)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(a.settle)
        for which, v in variants.items():
            la = os.getloadavg()[0]
            r = run_child({**base, **v, "out": os.path.join(work, f"{which}_loaded.pt")})
            res["runs"][f"{which}/loaded"] = {**r, "load_at_start": round(la, 2)}
            print(f"{which:6s} loaded: {r['seconds']:7.1f} s, {r['threads']} threads, load {la:.2f}", flush=True)
    finally:
        hog.kill()
    R = res["runs"]
    res["ratios"] = {"before loaded/idle": R["before/loaded"]["seconds"] / R["before/idle"]["seconds"],
                     "after loaded/idle": R["after/loaded"]["seconds"] / R["after/idle"]["seconds"],
                     "loaded after/before": R["after/loaded"]["seconds"] / R["before/loaded"]["seconds"]}
    for k, v in res["ratios"].items():
        print(f"{k}: {v:.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
