"""Checked writes to ctypes structures of the llama.cpp bindings.

A ctypes `Structure` accepts any attribute name: assigning a field that the bindings renamed or
dropped (llama-cpp-python 0.3.36 replaced `llama_model_params.use_mmap` with `load_mode`) sets a
plain Python attribute that llama.cpp never sees. Every field corral sets goes through `set_fields`,
which refuses names that are not C fields of the structure, so a binding change fails loudly at the
first load instead of silently dropping a setting.
"""

from __future__ import annotations

import ctypes
from typing import Any, TypeVar

from corral.errors import CorralError

S = TypeVar("S", bound=ctypes.Structure)


def c_fields(struct: type[ctypes.Structure] | ctypes.Structure) -> frozenset[str]:
    """The names of the C fields of a structure type (including those of its base structures)."""
    cls = struct if isinstance(struct, type) else type(struct)
    names: set[str] = set()
    for klass in cls.__mro__:
        for entry in klass.__dict__.get("_fields_", ()):
            names.add(entry[0])
    return frozenset(names)


def set_fields(struct: S, **values: Any) -> S:
    """Assign C fields of `struct`; an unknown field name raises `CorralError` before anything is set."""
    known = c_fields(struct)
    unknown = sorted(set(values) - known)
    if unknown:
        raise CorralError(
            f"llama.cpp bindings mismatch: {type(struct).__name__} has no field "
            + ", ".join(repr(u) for u in unknown)
        )
    for name, value in values.items():
        setattr(struct, name, value)
    return struct


def new(cls: type[S], **values: Any) -> S:
    """A zeroed `cls` with the given C fields set (checked like `set_fields`)."""
    return set_fields(cls(), **values)
