"""TaskWrapper, ActorWrapper and their TorchScript twins.

TaskWrapper: calling it, or any forwarded method, runs the call as a task
(a Ray task unless `executor` is given) that loads the models zero-copy,
runs, and returns the value; nothing survives between calls.
ActorWrapper: hand it to actors; each calls .load() once.
"""
from typing import Generic, TypeVar

from ._task_mode import _TaskRunner
from .model_wrappers import JITModelWrapper, ModelWrapper

T = TypeVar("T")


class TaskWrapper(_TaskRunner, Generic[T]):
    """Each call of the pipeline (or of a forwarded method) runs as a task.
    On a CUDA device each task uses the GPU's shared copy of the weights
    (strict: see ActorWrapper)."""

    _wrapper_class = ModelWrapper

    def __init__(self, pipeline, device="cpu", use_fast_load=False, method_names=None, executor=None, strict=False):
        super().__init__(self._wrapper_class.from_model(pipeline, mode="task", method_names=method_names),
                         device, use_fast_load, executor, strict)


class JITTaskWrapper(TaskWrapper):
    """TaskWrapper for TorchScript models and pipelines of them."""

    _wrapper_class = JITModelWrapper


class ActorWrapper(Generic[T]):
    """Publishes the pipeline once; each actor calls .load() to map it.

    device="cuda:N": every actor on that GPU uses the daemon's one device
    copy of the weights (CUDA IPC), shared and writable: never write into
    them. When the daemon cannot share one (built without CUDA, no GPU,
    MPS restrictions), load() warns and makes the actor a copy of its own;
    strict=True raises GpuSharingUnavailableError instead."""

    _wrapper_class = ModelWrapper

    def __init__(self, pipeline, device="cpu", use_fast_load=False, strict=False):
        self._wrapper = self._wrapper_class.from_model(pipeline, mode="actor")
        self.device = device
        self.use_fast_load = use_fast_load
        self.strict = strict

    def load(self, device=None):
        """The pipeline, its weights mapped zero-copy, on `device` (default:
        the wrapper's)."""
        return self._wrapper._load_local(self.use_fast_load, device or self.device, getattr(self, "strict", False))

    @property
    def _model_info(self):
        return self._wrapper._model_info

    def __repr__(self):
        return f"{type(self).__name__}({self._wrapper!r}, device={self.device!r})"


class JITActorWrapper(ActorWrapper):
    """ActorWrapper for TorchScript models and pipelines of them."""

    _wrapper_class = JITModelWrapper
