"""One Python process of the demo: loads a model through ActorWrapper (the
wrapper arrives pickled in a file, as it would in a Ray actor), runs a
forward pass, prints a JSON line, and holds the model until stdin closes.

    py_worker.py WRAPPER_FILE
"""
import json
import os
import pickle
import sys
import time

t_start = time.perf_counter()
import torch  # noqa: E402

import ray_zerocopy  # noqa: E402,F401

wrapper = pickle.loads(open(sys.argv[1], "rb").read())
t0 = time.perf_counter()
model = wrapper.load()
load_ms = (time.perf_counter() - t0) * 1000
t1 = time.perf_counter()
with torch.no_grad():
    out = model(torch.ones(1, model.layers[0].in_features))
forward_ms = (time.perf_counter() - t1) * 1000
print(json.dumps({"pid": os.getpid(), "load_ms": load_ms, "forward_ms": forward_ms,
                  "checksum": f"{float(out.sum()):.6e}"}), flush=True)
sys.stdin.read()
