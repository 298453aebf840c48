"""Loads a built x-modulus-hash component outside Warren and routes a few
messages through it, checking the answers against logic.py.

    pip install 'wasmtime>=50'      # wasmtime-py, with component support
    ./build.sh /tmp/out && python3 check_component.py /tmp/out/x-modulus-hash.wasm

It stands in for the host: it provides the `log` and `config` imports and
WASI, then calls the exported `exchange-type` interface.
"""

import sys

import wasmtime
from wasmtime import component as c

from logic import ModulusHash

IFACE = "warren:plugin/exchange-type@0.1.0"


def main(path: str) -> None:
    engine = wasmtime.Engine()
    comp = c.Component.from_file(engine, path)
    linker = c.Linker(engine)
    linker.add_wasip2()
    logs = []
    with linker.root() as root:
        with root.add_instance("warren:plugin/log@0.1.0") as log:
            log.add_func("log", lambda _store, level, msg: logs.append((level, msg)))
        with root.add_instance("warren:plugin/config@0.1.0") as config:
            config.add_func("get", lambda _store, _key: None)
            config.add_func("with-prefix", lambda _store, _prefix: [])
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    instance = linker.instantiate(store, comp)
    iface = instance.get_export_index(store, IFACE)

    def call(name, *args):
        func = instance.get_func(store, instance.get_export_index(store, name, iface))
        return func(store, *args)

    def message(key):
        m = c.Record()
        setattr(m, "routing-key", key)
        m.headers = []
        m.properties = None
        return m

    info = call("info")
    assert not getattr(info, "needs-headers") and not getattr(info, "needs-properties")

    exchange = call("[static]exchange.create", [])
    model = ModulusHash()
    keys = ["", "a", "b", "order.1", "order.2", "é"] + [f"key-{n}" for n in range(50)]
    for step in [("bind", 30), ("bind", 10), ("bind", 20), ("unbind", 10), ("unbind", 99), ("bind", 5)]:
        op, binding_id = step
        if op == "bind":
            call("[method]exchange.bind", exchange, binding_id, "", [])
            model.bind(binding_id, "")
        else:
            call("[method]exchange.unbind", exchange, binding_id)
            model.unbind(binding_id)
        want = [model.route(k) for k in keys]
        got = [call("[method]exchange.route", exchange, message(k)) for k in keys]
        assert got == want, (step, got, want)
        assert call("[method]exchange.route-batch", exchange, [message(k) for k in keys]) == want
    exchange.drop(store)
    print(f"ok: {path} routes like logic.py ({len(logs)} log lines)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "x-modulus-hash.wasm")
