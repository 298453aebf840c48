"""Unit tests for logic.py; plain Python, no componentize-py needed.

    cd plugins/python/x-modulus-hash && python3 -m unittest test_logic
"""

import unittest

from logic import ModulusHash, fnv1a_32


class Fnv1aTest(unittest.TestCase):
    def test_reference_vectors(self):
        # Published FNV-1a 32-bit test vectors.
        self.assertEqual(fnv1a_32(b""), 0x811C9DC5)
        self.assertEqual(fnv1a_32(b"a"), 0xE40C292C)
        self.assertEqual(fnv1a_32(b"foobar"), 0xBF9CF968)

    def test_stays_32_bit(self):
        self.assertLess(fnv1a_32(bytes(range(256)) * 4), 2**32)


class ModulusHashTest(unittest.TestCase):
    def test_no_bindings_is_unroutable(self):
        self.assertEqual(ModulusHash().route("anything"), [])

    def test_exactly_one_binding_by_modulus(self):
        x = ModulusHash()
        for binding_id in (30, 10, 20):  # bound out of order
            x.bind(binding_id, "")
        self.assertEqual(x.binding_ids(), [10, 20, 30])
        for key in ["", "a", "b", "order.1", "order.2", "é", "k" * 300]:
            index = fnv1a_32(key.encode("utf-8")) % 3
            self.assertEqual(x.route(key), [[10, 20, 30][index]], key)

    def test_deterministic_and_spread(self):
        x = ModulusHash()
        for binding_id in range(1, 5):
            x.bind(binding_id, "ignored")
        counts = {i: 0 for i in range(1, 5)}
        for n in range(4000):
            [target] = x.route(f"key-{n}")
            self.assertEqual(x.route(f"key-{n}"), [target])
            counts[target] += 1
        for count in counts.values():
            self.assertGreater(count, 800)

    def test_rebind_keeps_place_and_unbind(self):
        x = ModulusHash()
        x.bind(1, "a")
        x.bind(2, "b")
        x.bind(1, "c")  # binding an id again replaces it, no duplicate
        self.assertEqual(x.binding_ids(), [1, 2])
        x.unbind(1)
        x.unbind(99)  # unknown ids are ignored
        self.assertEqual(x.binding_ids(), [2])
        self.assertEqual(x.route("anything"), [2])
        x.unbind(2)
        self.assertEqual(x.route("anything"), [])

    def test_known_routes(self):
        # Pins the hash and the ordering, matching the built component
        # (bindings 10, 20, 30).
        x = ModulusHash()
        for binding_id in (10, 20, 30):
            x.bind(binding_id, "")
        self.assertEqual(
            [x.route(k) for k in ["a", "b", "order.1", "order.2", ""]],
            [[20], [20], [20], [30], [20]],
        )


if __name__ == "__main__":
    unittest.main()
