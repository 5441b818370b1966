"""How fast are the procedural kinds, and a pretraining step, on this machine (run by hand).

    python benchmarks/procedural_speed.py --n 5000 --size 64

Per kind: images per second of `generate` on one thread (what dpmammo uses) and on all of torch's
threads, each in a fresh process, and the time for 100k images extrapolated from --n. Then the
time of one supervised pretraining step (cnn-small, batch 128) and of an epoch of 100k images,
extrapolated. Prints the load average before and after: the numbers mean little without it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

PROBE = r"""
import json, sys, time, torch
from dpmammo.allocator import keep_freed_memory
keep_freed_memory()
kind, n, size, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
from dpmammo.data.procedural import store
if threads > 1:
    store._one_thread = __import__("contextlib").nullcontext  # measure the multi-threaded alternative
torch.set_num_threads(threads)
store.generate(kind, seed=99, start=0, stop=1, size=size)  # warm-up: imports, FFT plans
t = time.perf_counter()
store.generate(kind, seed=0, start=0, stop=n, size=size)
print(json.dumps({"s": time.perf_counter() - t}))
"""

STEP = r"""
import json, sys, time, torch
from torch import nn
from dpmammo.allocator import keep_freed_memory
keep_freed_memory()
size, width, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
from dpmammo.models import create_model
model = create_model("cnn-small", input_size=size, width=width)
model.head = nn.Linear(model.num_features, 11)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.rand(batch, 1, size, size), torch.randint(0, 11, (batch,))
times = []
for _ in range(6):
    t = time.perf_counter()
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    times.append(time.perf_counter() - t)
print(json.dumps({"s": min(times[1:])}))
"""


def run(code: str, *args) -> float:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])["s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    from dpmammo.data.procedural.kinds import KINDS

    print(f"load average at start: {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")
    print(f"generate {a.n} images at {a.size} px (fresh process each; 100k extrapolated)")
    for kind in KINDS:
        one, many = run(PROBE, kind, a.n, a.size, 1), run(PROBE, kind, a.n, a.size, os.cpu_count())
        print(f"  {kind:17s} 1 thread {a.n / one:7.0f} img/s → 100k in {1e5 / (a.n / one) / 60:5.1f} min;  "
              f"{os.cpu_count()} threads {a.n / many:7.0f} img/s → 100k in {1e5 / (a.n / many) / 60:5.1f} min")
    step = run(STEP, a.size, a.width, a.batch)
    print(f"pretrain step (cnn-small width {a.width}, {a.size} px, batch {a.batch}, 11 classes): {step:.3f} s "
          f"→ one epoch of 100k images in {1e5 / a.batch * step / 60:.1f} min")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
