"""The `exchange` resource of the exported `exchange-type` interface.

componentize-py requires this module name: an exported interface's
resources are looked up as classes in a module named after the interface
(`exchange-type` -> `exchange_type`).
"""

from typing import List, Tuple

from wit_world.exports import exchange_type
from wit_world.imports.types import FieldValue

from logic import ModulusHash

FieldTable = List[Tuple[str, FieldValue]]


class Exchange(exchange_type.Exchange):
    def __init__(self) -> None:
        self._state = ModulusHash()

    @classmethod
    def create(cls, arguments: FieldTable) -> "Exchange":
        # No declare arguments; to refuse a declare, raise
        # componentize_py_types.Err("reason") (406 PRECONDITION_FAILED).
        return cls()

    def bind(self, id: int, binding_key: str, arguments: FieldTable) -> None:
        self._state.bind(id, binding_key)

    def unbind(self, id: int) -> None:
        self._state.unbind(id)

    def route(self, message: exchange_type.Message) -> List[int]:
        return self._state.route(message.routing_key)

    def route_batch(self, messages: List[exchange_type.Message]) -> List[List[int]]:
        route = self._state.route
        return [route(m.routing_key) for m in messages]
