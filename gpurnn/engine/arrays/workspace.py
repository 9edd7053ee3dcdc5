"""Scratch arrays reused from one call to the next.

A training step needs the same large temporaries every time (states, errors, a block of
logits). Allocating them afresh makes the host allocator hand fresh pages back and forth
with the kernel, and the page faults cost more than the arithmetic of a small step. A
:class:`Workspace` keeps one flat buffer per name, grown to the largest size asked for, and
hands out views of it; calls with other shapes (a different sequence length) reuse it.
"""
from __future__ import annotations

import math

__all__ = ["Workspace"]


class Workspace:
    """Named scratch buffers; the contents of a view are undefined until written.

    A view stays valid until the same name is asked for again, so an owner (a cell, a
    model) must not hand these arrays to its caller: return copies.
    """

    def __init__(self):
        self._buffers = {}
        self._children = {}

    def child(self, key) -> "Workspace":
        """A workspace of its own under ``key`` (made on first use): the engine gives each
        block of a long sequence whose cache it keeps one, and a stack one per layer."""
        if key not in self._children:
            self._children[key] = Workspace()
        return self._children[key]

    def clear_children(self):
        """Free the children's buffers, keeping this workspace's own."""
        for child in self._children.values():
            child.clear()

    def empty(self, name, shape, dtype, xp):
        """An uninitialised array of ``shape`` backed by the buffer ``name``."""
        shape = tuple(int(n) for n in shape)
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if (buffer is None or buffer.size < size or buffer.dtype != dtype
                or type(buffer) is not xp.ndarray):
            buffer = xp.empty(max(size, 1), dtype=dtype)
            self._buffers[name] = buffer
        return buffer[:size].reshape(shape)

    def zeros(self, name, shape, dtype, xp):
        """Like :meth:`empty`, filled with zeros."""
        array = self.empty(name, shape, dtype, xp)
        array.fill(0)
        return array

    def clear(self):
        """Free every buffer, children's too (they are made again on the next use)."""
        self._buffers.clear()
        for child in self._children.values():
            child.clear()
