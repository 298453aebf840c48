"""The x-modulus-hash exchange type, as a WebAssembly component.

Built with componentize-py (see build.sh) against the `exchange-plugin`
world of wit/warren-plugin.wit. componentize-py generates the
`wit_world` package at build time; this module implements its exports:

* `ExchangeType` (this module, named by `componentize ... app`): the
  exported `exchange-type` interface's free function `info`.
* `exchange_type.Exchange` (exchange_type.py): the interface's `exchange`
  resource. componentize-py looks for an exported interface's resources in
  a top-level module named after the interface.

The routing itself is in logic.py, which needs no bindings.
"""

from wit_world import exports
from wit_world.exports.exchange_type import TypeInfo


class ExchangeType(exports.ExchangeType):
    def info(self) -> TypeInfo:
        # Routing reads only the routing key: ask the host not to copy
        # headers or properties across on every publish, and (the answer
        # being a function of the key and the bindings) to remember it.
        return TypeInfo(needs_headers=False, needs_properties=False,
                        same_key_same_route=True)
