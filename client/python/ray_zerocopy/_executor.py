"""Where task-mode calls run: a Ray task by default, or any
concurrent.futures.Executor the caller passes."""
import functools


def _ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError(
            "task mode runs each call as a Ray task, and Ray is not installed: pip install 'ray[data]', "
            "or pass executor=concurrent.futures.ProcessPoolExecutor() (any concurrent.futures.Executor)") from None
    return ray


@functools.lru_cache(maxsize=None)
def _remote(fn, num_gpus: float):
    return _ray().remote(num_gpus=num_gpus)(fn)


def run(executor, device: str, fn, *args):
    """Runs fn(*args) remotely, blocks, and returns its value (or raises its
    exception)."""
    if executor is not None:
        return executor.submit(fn, *args).result()
    ray = _ray()
    num_gpus = 1 if str(device).startswith("cuda") else 0
    return ray.get(_remote(fn, num_gpus).remote(*args))
