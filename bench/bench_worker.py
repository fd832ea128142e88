"""One fresh process of the benchmark: measures one way of getting a
usable model and prints one JSON line. Time counts from after the imports
(interpreter and torch start-up are the same for every method).

    bench_worker.py ours-load WRAPPER_PICKLE
    bench_worker.py ours-state-dict REF MIB
    bench_worker.py torch-load FILE MIB
    bench_worker.py forward REF MIB [populate]
    bench_worker.py tensors-ours REF                   load_state_dict alone (the per-tensor cost)
    bench_worker.py tensors-torch FILE                 torch.load(weights_only=True) of the same state dict
    bench_worker.py tensors-safetensors FILE           safetensors.torch.load_file of the same tensors
    bench_worker.py jit-ours WRAPPER_PICKLE            JITModelWrapper.load() of a TorchScript model
    bench_worker.py jit-torch FILE                     torch.jit.load of the same model's file
    bench_worker.py gpu-attach WRAPPER_PICKLE [hold]   ours: the GPU's shared copy
    bench_worker.py gpu-to-cuda WRAPPER_PICKLE [hold]  host-mapped, then .to("cuda")

GPU modes time from after torch's own CUDA start (which every GPU process
pays); "hold" keeps the model until stdin closes (the parent measures device
memory meanwhile).
"""
import json
import pickle
import sys
import time

import torch

import bench_model

torch.set_num_threads(2)


def usable_from_state_dict(state, mib):
    model = bench_model.factory(mib)()
    model.load_state_dict(state, assign=True, strict=True)
    return model.eval()


def main():
    mode = sys.argv[1]
    out = {"mode": mode}
    if mode == "ours-load":
        from ray_zerocopy import ActorWrapper  # noqa: F401  (imports the wrappers, as torch is imported)
        blob = open(sys.argv[2], "rb").read()
        t = time.perf_counter()
        model = pickle.loads(blob).load()
        out["seconds"] = time.perf_counter() - t
    elif mode in ("jit-ours", "jit-torch"):
        if mode == "jit-ours":
            from ray_zerocopy import JITActorWrapper  # noqa: F401  (imports the wrappers)
            blob = open(sys.argv[2], "rb").read()
            t = time.perf_counter()
            model = pickle.loads(blob).load()
        else:
            t = time.perf_counter()
            model = torch.jit.load(sys.argv[2])
        out["seconds"] = time.perf_counter() - t
        with torch.no_grad():  # the same module, either way
            out["output_sum"] = float(model(torch.ones(2, 512)).sum())
    elif mode == "ours-state-dict":
        import ray_zerocopy
        # The implementation and its C++ extension imported before the
        # clock starts, as torch is (the package imports them on first use:
        # ~15 ms of a first call, a process's one-time cost like torch's).
        from ray_zerocopy import _store  # noqa: F401
        t = time.perf_counter()
        model = usable_from_state_dict(ray_zerocopy.load_state_dict(sys.argv[2]), int(sys.argv[3]))
        out["seconds"] = time.perf_counter() - t
    elif mode == "torch-load":
        t = time.perf_counter()
        model = usable_from_state_dict(torch.load(sys.argv[2], weights_only=True, mmap=False), int(sys.argv[3]))
        out["seconds"] = time.perf_counter() - t
    elif mode in ("tensors-ours", "tensors-torch", "tensors-safetensors"):
        if mode == "tensors-ours":
            import ray_zerocopy
            from ray_zerocopy import _store  # noqa: F401  (imported before the clock, as above)
            load = ray_zerocopy.load_state_dict
        elif mode == "tensors-torch":
            def load(path):
                return torch.load(path, weights_only=True, mmap=False)
        else:
            from safetensors.torch import load_file as load
        t = time.perf_counter()
        state = load(sys.argv[2])
        out["seconds"] = time.perf_counter() - t
        out["tensors"] = len(state)
    elif mode == "forward":
        from ray_zerocopy import _store
        populate = len(sys.argv) > 4 and sys.argv[4] == "populate"
        t = time.perf_counter()
        model = usable_from_state_dict(_store.load_state_dict(sys.argv[2], populate=populate), int(sys.argv[3]))
        out["load_seconds"] = time.perf_counter() - t
        x = bench_model.example_input()
        times = []
        with torch.no_grad():
            for _ in range(4):
                t = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t)
        out["first_seconds"] = times[0]
        out["warm_seconds"] = sorted(times[1:])[1]
    elif mode in ("gpu-attach", "gpu-to-cuda"):
        import ray_zerocopy  # noqa: F401
        wrapper = pickle.loads(open(sys.argv[2], "rb").read())
        torch.zeros(1, device="cuda")  # torch's CUDA start
        t = time.perf_counter()
        if mode == "gpu-attach":
            wrapper.strict = True
            model = wrapper.load(device="cuda:0")
        else:
            model = wrapper.load().to("cuda:0")
        torch.cuda.synchronize()
        out["seconds"] = time.perf_counter() - t
        out["torch_allocated"] = torch.cuda.memory_allocated()
        if len(sys.argv) > 3 and sys.argv[3] == "hold":
            print(json.dumps(out), flush=True)
            sys.stdin.read()
            return
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)


main()
