"""Task mode: calls of a wrapped model or pipeline run as tasks (a Ray
task unless an executor is given), each loading the models zero-copy where
it runs. model_wrappers builds these; wrappers' TaskWrapper is one.
"""
from . import _executor


def _run_call(wrapper, device, use_fast_load, strict, method, args, kwargs):
    """The body of a task: load, call, return (module level so that it
    pickles by reference)."""
    target = wrapper._load_local(use_fast_load, device, strict)
    if method is not None:
        target = getattr(target, method)
    return target(*args, **kwargs)


def _run_model_call(wrapper, key, device, use_fast_load, strict, method, args, kwargs):
    """The body of a task for one model of a pipeline: load that model,
    call it (or its method), return the value."""
    target = wrapper._load_model(key, device, use_fast_load, strict)
    if method is not None:
        target = getattr(target, method)
    return target(*args, **kwargs)


class _RemoteModel:
    """Stands in for model `key` of a task-mode pipeline: each call (and
    each method call) runs as a task that loads the model zero-copy, as
    the published library's shims do."""

    def __init__(self, wrapper, key, device="cpu", use_fast_load=False, strict=False, executor=None, methods=None):
        self._wrapper = wrapper
        self._key = key
        self._device = device
        self._use_fast_load = use_fast_load
        self._strict = strict
        self._executor = executor
        self._methods = methods  # the model's public methods; None: unknown, any name is tried remotely

    def _call(self, method, args, kwargs):
        return _executor.run(self._executor, self._device, _run_model_call, self._wrapper, self._key, self._device,
                             self._use_fast_load, self._strict, method, args, kwargs)

    def __call__(self, *args, **kwargs):
        return self._call(None, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        methods = self.__dict__.get("_methods")
        if methods is not None and name not in methods:
            raise AttributeError(f"model {self._key!r} has no method {name!r} to run as a task (a stand-in runs "
                                 "the model's calls and public methods; its other attributes stay with the model)")

        def method(*args, **kwargs):
            return self._call(name, args, kwargs)

        method.__name__ = name
        return method

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_executor"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._executor = None

    def __repr__(self):
        info = self._wrapper._models[self._key]
        return f"<remote model {self._key!r} {info['digest'][:12]} on {self._device}>"


class _TaskRunner:
    """Runs calls of a wrapped model/pipeline as tasks."""

    def __init__(self, wrapper, device="cpu", use_fast_load=False, executor=None, strict=False):
        self._wrapper = wrapper
        self._device = device
        self._use_fast_load = use_fast_load
        self._executor = executor
        self._strict = strict

    def _call(self, method, args, kwargs):
        return _executor.run(self._executor, self._device, _run_call, self._wrapper, self._device,
                             self._use_fast_load, getattr(self, "_strict", False), method, args, kwargs)

    def __call__(self, *args, **kwargs):
        return self._call(None, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        methods = getattr(self._wrapper, "_methods", None)
        if methods is not None and name not in methods:
            # Not a method: the pipeline's attribute as the published
            # library gives it (values as they are, models as stand-ins
            # whose calls run as tasks).
            if not self._wrapper._is_standalone_module:
                stand_in = self.__dict__.get("_stand_in")
                if stand_in is None:
                    stand_in = self._wrapper._load_for_tasks(self._device, self._use_fast_load,
                                                             getattr(self, "_strict", False), self._executor)
                    self.__dict__["_stand_in"] = stand_in
                try:
                    return getattr(stand_in, name)
                except AttributeError:
                    pass
            raise AttributeError(f"the wrapped {'pipeline' if not self._wrapper._is_standalone_module else 'model'} "
                                 f"has no attribute {name!r}")

        def forward(*args, **kwargs):
            return self._call(name, args, kwargs)

        forward.__name__ = name
        return forward

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_executor", "_stand_in")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._executor = None

    def __repr__(self):
        return f"{type(self).__name__}({self._wrapper!r}, device={self._device!r})"
