"""Routing logic of the x-modulus-hash exchange type, in plain Python.

Kept apart from app.py (which imports the bindings componentize-py
generates) so that it can be imported and unit-tested with any Python:
``python3 -m unittest test_logic``.

Every message goes to exactly one binding: the bindings are ordered by
binding id (the host hands out ids in bind order), and a message goes to
the binding at index ``fnv1a_32(routing_key) % len(bindings)``. With no
bindings, a message is unroutable.
"""

from bisect import bisect_left, insort

FNV32_OFFSET_BASIS = 0x811C9DC5
FNV32_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    """32-bit FNV-1a. Deterministic, unlike Python's salted hash()."""
    h = FNV32_OFFSET_BASIS
    for byte in data:
        h ^= byte
        h = (h * FNV32_PRIME) & 0xFFFFFFFF
    return h


class ModulusHash:
    """The routing state of one x-modulus-hash exchange."""

    def __init__(self) -> None:
        # Binding ids, sorted. Binding keys and arguments don't matter.
        self._ids: list[int] = []

    def bind(self, binding_id: int, binding_key: str) -> None:
        """Adds a binding; binding an id again keeps it in its place."""
        i = bisect_left(self._ids, binding_id)
        if i == len(self._ids) or self._ids[i] != binding_id:
            insort(self._ids, binding_id)

    def unbind(self, binding_id: int) -> None:
        """Removes a binding; unknown ids are ignored."""
        i = bisect_left(self._ids, binding_id)
        if i < len(self._ids) and self._ids[i] == binding_id:
            del self._ids[i]

    def route(self, routing_key: str) -> list[int]:
        """The one binding a message with this routing key goes to."""
        if not self._ids:
            return []
        index = fnv1a_32(routing_key.encode("utf-8")) % len(self._ids)
        return [self._ids[index]]

    def binding_ids(self) -> list[int]:
        return list(self._ids)
