"""A CPU stand-in for a GPU: find the tensors hooklens creates on the default device that
then meet the data (which, on a GPU, lives elsewhere).

On a machine with one device every tensor is on the CPU, so a `torch.zeros(n)` that a
GPU run would leave on the CPU beside CUDA activations goes unnoticed. `device_checked`
runs code under a `TorchFunctionMode` that keeps a virtual device per tensor:

- a factory call (`zeros`, `ones`, `empty`, `full`, `arange`, `eye`, `tensor`,
  `as_tensor`, `rand*`, `linspace`, ...) made from hooklens code (the first frame
  outside torch is in the `hooklens` package) with no `device=` (or `device=None`)
  creates a tensor on the *default device*, which it marks;
- whatever an operation computes from marked tensors alone is marked too;
- an operation that combines a marked tensor of one element or more with an unmarked
  one is a *mismatch*: on a GPU it would raise "Expected all tensors to be on the same
  device" (or silently compute on the CPU). It is recorded with the place the marked
  tensor was created and the place it met the data.

What torch allows across devices is allowed here: a 0-d tensor beside any other
(`cuda_tensor * torch.tensor(2.0)`), a marked *index* into data
(`data[torch.arange(n)]`), copies (`copy_`, `__setitem__`), and any `.to(...)`,
`.cuda()` with a device object (`device=x.device`, `.to(x)`), which makes the result
the data's (unmarked). Tensors created by the test itself, the model and TransformerLens
are the data.

The CPU *by name* is the default device's stand-in too: hooklens's `device="cpu"`,
`.cpu()` and `.to("cpu")` mark their result (a GPU run leaves it on the CPU), so a
digest or count kept on the CPU on purpose passes as long as it never meets the data.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

FACTORIES = {
    getattr(torch, name)
    for name in (
        "zeros",
        "ones",
        "empty",
        "full",
        "arange",
        "range",
        "eye",
        "tensor",
        "as_tensor",
        "asarray",
        "rand",
        "randn",
        "randint",
        "randperm",
        "linspace",
        "logspace",
        "scalar_tensor",
        "empty_strided",
        "tril_indices",
        "triu_indices",
        "normal",
    )
}
"""torch's factory functions: their device is `device=`, else the default device."""
CONVERSIONS = {torch.tensor, torch.as_tensor, torch.asarray}
MOVES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu, torch.Tensor.type}
COPIES = {torch.Tensor.copy_, torch.Tensor.__setitem__}
INDEXING = {torch.Tensor.__getitem__, torch.Tensor.index_select, torch.index_select}


@dataclass
class Mismatch:
    """A default-device tensor meeting the data: where it was made, where it met it."""

    created: str
    met: str
    op: str

    def __str__(self) -> str:
        return f"created at {self.created}, met the data at {self.met} ({self.op})"


@dataclass
class DeviceDiscipline(TorchFunctionMode):
    """The mode `device_checked` runs under (module docstring); `mismatches` collects."""

    mismatches: list[Mismatch] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # every marked factory call's place
    _marked: dict[int, str] = field(default_factory=dict)  # id(tensor) -> where created

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func in FACTORIES:
            if func in CONVERSIONS and args and isinstance(args[0], torch.Tensor):
                return result  # torch.tensor(t), as_tensor(t): t's device
            device = kwargs.get("device")
            if (device is None or _is_cpu_name(device)) and (where := _hooklens_caller()):
                self.created.append(where)
                self._mark(result, where)
            return result
        if func in MOVES and args and isinstance(args[0], torch.Tensor):
            return self._moved(func, args, kwargs, result)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        marked = [t for t in tensors if id(t) in self._marked]
        if not marked or func in COPIES:
            return result
        data = [t for t in tensors if id(t) not in self._marked and t.dim() > 0]
        real = [t for t in marked if t.dim() > 0]
        if func in INDEXING and args and id(args[0]) not in self._marked:
            real = []  # a CPU index into the data: torch moves it
        if data and real:
            self.mismatches.append(
                Mismatch(self._marked[id(real[0])], _caller() or "?", _name(func))
            )
        elif not data:
            self._mark(result, self._marked[id(marked[0])])
        return result

    def _moved(self, func, args, kwargs, result):
        """`.to`, `.cuda`, `.cpu`, `.type`: hooklens's `.cpu()` / `.to("cpu")` put the
        result on the CPU (marked); a move to a device object or another tensor's device
        puts it with the data; a dtype change leaves it where it was."""
        target = _device_named(func, args[1:], kwargs)
        if target == "cpu" and (where := _hooklens_caller()):
            self._unmark(result)
            self._mark(result, where)
        elif target is not None:
            self._unmark(result)
        elif id(args[0]) in self._marked:
            self._mark(result, self._marked[id(args[0])])
        return result

    def _mark(self, value: Any, where: str) -> None:
        for tensor in tree_flatten(value)[0]:
            if isinstance(tensor, torch.Tensor) and id(tensor) not in self._marked:
                self._marked[id(tensor)] = where
                weakref.finalize(tensor, self._marked.pop, id(tensor), None)

    def _unmark(self, value: Any) -> None:
        for tensor in tree_flatten(value)[0]:
            if isinstance(tensor, torch.Tensor):
                self._marked.pop(id(tensor), None)


@contextmanager
def device_checked() -> Iterator[DeviceDiscipline]:
    """Run the block under `DeviceDiscipline`; fail (AssertionError listing each place)
    when hooklens created a tensor on the default device that then met the data."""
    mode = DeviceDiscipline()
    with mode:
        yield mode
    if mode.mismatches:
        places = sorted({str(m) for m in mode.mismatches})
        raise AssertionError(
            "hooklens created tensors on the default device that met the data (on a GPU: "
            "a device error, or work on the CPU); pass device= (and dtype=) of the data:\n  "
            + "\n  ".join(places)
        )


def _is_cpu_name(device: Any) -> bool:
    """A device spelled as the CPU by name (`"cpu"`): a `torch.device` object is taken
    to be the data's (`device=x.device`), which on this machine is the CPU too."""
    return isinstance(device, str) and torch.device(device).type == "cpu"


def _device_named(func: Any, args: tuple, kwargs: dict) -> str | None:
    """`"cpu"` for a move to the CPU by name (`.cpu()`, `.to("cpu")`), `"data"` for a
    move to a device object or another tensor's device, None for a dtype change."""
    if func is torch.Tensor.cpu:
        return "cpu"
    if func is torch.Tensor.cuda:
        return "data"
    device = kwargs.get("device", args[0] if args else None)
    if isinstance(device, str):
        return "cpu" if _is_cpu_name(device) else "data"
    if isinstance(device, (torch.device, torch.Tensor)) or (
        isinstance(device, int) and not isinstance(device, bool)
    ):
        return "data"
    return None


def _frames() -> Iterator[Any]:
    frame = sys._getframe(2)
    while frame is not None:
        yield frame
        frame = frame.f_back


def _outside_torch() -> Any:
    """The first frame (above this module) outside torch: the code that called torch."""
    for frame in _frames():
        module = frame.f_globals.get("__name__", "")
        if module == __name__ or module == "torch" or module.startswith("torch."):
            continue
        return frame
    return None


def _place(frame: Any) -> str:
    module = frame.f_globals.get("__name__", "?")
    return f"{module}:{frame.f_lineno} ({frame.f_code.co_name})"


def _hooklens_caller() -> str | None:
    frame = _outside_torch()
    if frame is None:
        return None
    module = frame.f_globals.get("__name__", "")
    if module == "hooklens" or module.startswith("hooklens."):
        return _place(frame)
    return None


def _caller() -> str | None:
    frame = _outside_torch()
    return _place(frame) if frame is not None else None


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
