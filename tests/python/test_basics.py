"""BlockingConnection basics: declare, bind, publish, get, consume, properties, qos, acks."""

import datetime
import decimal
import time
import unittest
import uuid

import pika
import pika.exceptions

from warren_support import BrokerTestCase, params, unique


class TestConnection(BrokerTestCase):
    def test_connect_and_close(self):
        conn = self.connect()
        self.assertTrue(conn.is_open)
        ch = conn.channel()
        self.assertTrue(ch.is_open)
        ch.close()
        self.assertTrue(ch.is_closed)
        conn.close()
        self.assertTrue(conn.is_closed)

    def test_server_properties_advertise_rabbitmq_capabilities(self):
        conn = self.connect()
        props = conn._impl.server_properties  # what pika negotiated against
        caps = props["capabilities"]
        for cap in (
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "exchange_exchange_bindings",
            "authentication_failure_close",
            "per_consumer_qos",
        ):
            self.assertIs(caps.get(cap), True, cap)
        self.assertTrue(conn.publisher_confirms)
        self.assertTrue(conn.basic_nack)
        self.assertTrue(conn.consumer_cancel_notify)
        self.assertTrue(conn.exchange_exchange_bindings)

    def test_many_channels_on_one_connection(self):
        conn = self.connect()
        channels = [conn.channel() for _ in range(20)]
        numbers = {ch.channel_number for ch in channels}
        self.assertEqual(len(numbers), 20)
        q = self.declare_queue(channels[0])
        for i, ch in enumerate(channels):
            ch.basic_publish("", q, b"from %d" % i)
        self.wait_for_count(channels[-1], q, 20)
        for ch in channels:
            ch.close()

    def test_heartbeats_keep_an_idle_connection_alive(self):
        conn = pika.BlockingConnection(params(heartbeat=1))
        self.addCleanup(self._close_quietly, conn)
        self.assertEqual(conn._impl.params.heartbeat, 1)
        # pika drops a connection that goes silent for a few heartbeat intervals; the broker
        # must keep sending heartbeats while nothing else happens.
        conn.sleep(4)
        self.assertTrue(conn.is_open)
        ch = conn.channel()
        q = self.declare_queue(ch)
        ch.basic_publish("", q, b"alive")
        self.assertEqual(self.get_message(ch, q, auto_ack=True)[2], b"alive")


class TestDeclarePublishGet(BrokerTestCase):
    def test_declare_publish_get(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        ok = ch.queue_declare(q, passive=True)
        self.assertEqual(ok.method.queue, q)
        self.assertEqual(ok.method.message_count, 0)
        self.assertEqual(ok.method.consumer_count, 0)

        ch.basic_publish(exchange="", routing_key=q, body=b"hello warren")
        self.wait_for_count(ch, q, 1)
        method, props, body = ch.basic_get(q, auto_ack=False)
        self.assertIsInstance(method, pika.spec.Basic.GetOk)
        self.assertEqual(body, b"hello warren")
        self.assertEqual(method.exchange, "")
        self.assertEqual(method.routing_key, q)
        self.assertFalse(method.redelivered)
        self.assertEqual(method.message_count, 0)
        self.assertEqual(method.delivery_tag, 1)
        ch.basic_ack(method.delivery_tag)

        self.assertEqual(ch.basic_get(q), (None, None, None))

    def test_get_reports_remaining_message_count(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        for i in range(3):
            ch.basic_publish("", q, str(i).encode())
        self.wait_for_count(ch, q, 3)
        counts = []
        bodies = []
        for _ in range(3):
            method, _, body = ch.basic_get(q, auto_ack=True)
            counts.append(method.message_count)
            bodies.append(body)
        self.assertEqual(counts, [2, 1, 0])
        self.assertEqual(bodies, [b"0", b"1", b"2"])

    def test_server_named_queue(self):
        ch = self.channel()
        ok = ch.queue_declare("", exclusive=True)
        name = ok.method.queue
        self.assertTrue(name.startswith("amq.gen-"), name)
        ch.basic_publish("", name, b"x")
        self.assertEqual(self.get_message(ch, name, auto_ack=True)[2], b"x")

    def test_redeclare_is_idempotent(self):
        ch = self.channel()
        q = self.declare_queue(ch, durable=True)
        ch.basic_publish("", q, b"x")
        self.wait_for_count(ch, q, 1)
        ok = ch.queue_declare(q, durable=True)
        self.assertEqual(ok.method.message_count, 1)

    def test_empty_and_large_bodies(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        big = bytes(range(256)) * 4096 * 2  # 2 MiB: many body frames
        ch.basic_publish("", q, b"")
        ch.basic_publish("", q, big)
        self.assertEqual(self.get_message(ch, q, auto_ack=True)[2], b"")
        self.assertEqual(self.get_message(ch, q, auto_ack=True)[2], big)

    def test_queue_purge_returns_count(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        for i in range(7):
            ch.basic_publish("", q, b"m%d" % i)
        self.wait_for_count(ch, q, 7)
        ok = ch.queue_purge(q)
        self.assertEqual(ok.method.message_count, 7)
        self.assertEqual(self.message_count(ch, q), 0)
        self.assertEqual(ch.queue_purge(q).method.message_count, 0)

    def test_purge_leaves_unacked_messages_alone(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        for i in range(3):
            ch.basic_publish("", q, b"m%d" % i)
        method, _, _ = self.get_message(ch, q)  # one unacked
        self.assertEqual(ch.queue_purge(q).method.message_count, 2)
        ch.basic_nack(method.delivery_tag, requeue=True)
        self.wait_for_count(ch, q, 1)

    def test_queue_delete_returns_count(self):
        ch = self.channel()
        q = unique("del")
        ch.queue_declare(q)
        for i in range(4):
            ch.basic_publish("", q, b"m")
        self.wait_for_count(ch, q, 4)
        ok = ch.queue_delete(q)
        self.assertEqual(ok.method.message_count, 4)
        with self.assertChannelClosed(404, "NOT_FOUND - no queue '%s' in vhost '/'" % q):
            ch.queue_declare(q, passive=True)

    def test_delete_of_missing_queue_and_exchange_succeeds(self):
        # RabbitMQ answers delete-ok for things that do not exist.
        ch = self.channel()
        self.assertEqual(ch.queue_delete(unique("never")).method.message_count, 0)
        ch.exchange_delete(unique("never"))
        self.assertTrue(ch.is_open)

    def test_auto_delete_exchange_goes_with_its_last_binding(self):
        conn = self.connect()
        ch = conn.channel()
        x = self.declare_exchange(ch, "direct", auto_delete=True)
        q = self.declare_queue(ch)
        ch.queue_bind(q, x, routing_key="k")
        ch.exchange_declare(x, passive=True)  # still there while bound
        ch.queue_unbind(q, x, routing_key="k")
        with self.assertChannelClosed(404, "NOT_FOUND - no exchange '%s' in vhost '/'" % x):
            ch.exchange_declare(x, passive=True)

    def test_unbinding_what_was_never_bound_succeeds(self):
        ch = self.channel()
        x = self.declare_exchange(ch, "direct")
        q = self.declare_queue(ch)
        ch.queue_unbind(q, x, routing_key="never-bound")
        self.assertTrue(ch.is_open)

    def test_auto_delete_queue_goes_with_its_last_consumer(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch, auto_delete=True)
        tag = ch.basic_consume(q, lambda *a: None)
        ch.basic_cancel(tag)
        probe = self.channel()
        deadline = time.monotonic() + 5
        while True:
            try:
                probe.queue_declare(q, passive=True)
            except pika.exceptions.ChannelClosedByBroker as e:
                self.assertEqual(e.reply_code, 404)
                break
            self.assertLess(time.monotonic(), deadline, "auto-delete queue still exists")
            time.sleep(0.05)


class TestRouting(BrokerTestCase):
    def _drain(self, ch, q):
        out = []
        while True:
            method, _, body = ch.basic_get(q, auto_ack=True)
            if method is None:
                return out
            out.append(body)

    def _settle(self, ch, *queues_and_counts):
        for q, n in queues_and_counts:
            self.wait_for_count(ch, q, n)

    def test_direct_exchange(self):
        ch = self.channel()
        x = self.declare_exchange(ch, "direct")
        qa = self.declare_queue(ch)
        qb = self.declare_queue(ch)
        ch.queue_bind(qa, x, routing_key="a")
        ch.queue_bind(qb, x, routing_key="b")
        ch.queue_bind(qb, x, routing_key="a")
        ch.basic_publish(x, "a", b"to-a")
        ch.basic_publish(x, "b", b"to-b")
        ch.basic_publish(x, "c", b"nowhere")
        self._settle(ch, (qa, 1), (qb, 2))
        self.assertEqual(self._drain(ch, qa), [b"to-a"])
        self.assertEqual(self._drain(ch, qb), [b"to-a", b"to-b"])

        ch.queue_unbind(qb, x, routing_key="a")
        ch.basic_publish(x, "a", b"again")
        self._settle(ch, (qa, 1))
        self.assertEqual(self._drain(ch, qb), [])

    def test_default_exchange_binds_every_queue_by_name(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        ch.basic_publish("", q, b"direct by name")
        self.assertEqual(self.get_message(ch, q, auto_ack=True)[2], b"direct by name")

    def test_fanout_exchange(self):
        ch = self.channel()
        x = self.declare_exchange(ch, "fanout")
        queues = [self.declare_queue(ch) for _ in range(3)]
        for q in queues:
            ch.queue_bind(q, x, routing_key="ignored-%s" % q)
        ch.basic_publish(x, "anything", b"everyone")
        for q in queues:
            self.assertEqual(self.get_message(ch, q, auto_ack=True)[2], b"everyone")

    def test_topic_exchange(self):
        ch = self.channel()
        x = self.declare_exchange(ch, "topic")
        star = self.declare_queue(ch)
        hash_ = self.declare_queue(ch)
        exact = self.declare_queue(ch)
        ch.queue_bind(star, x, routing_key="stock.*.nyse")
        ch.queue_bind(hash_, x, routing_key="stock.#")
        ch.queue_bind(exact, x, routing_key="stock.ibm.nyse")
        for rk in ("stock.ibm.nyse", "stock.msft.nasdaq", "stock", "stock.a.b.nyse", "bond.x.nyse"):
            ch.basic_publish(x, rk, rk.encode())
        self._settle(ch, (star, 1), (hash_, 4), (exact, 1))
        self.assertEqual(self._drain(ch, star), [b"stock.ibm.nyse"])
        self.assertEqual(
            self._drain(ch, hash_),
            [b"stock.ibm.nyse", b"stock.msft.nasdaq", b"stock", b"stock.a.b.nyse"],
        )
        self.assertEqual(self._drain(ch, exact), [b"stock.ibm.nyse"])

    def test_topic_wildcard_edge_cases(self):
        ch = self.channel()
        x = self.declare_exchange(ch, "topic")
        keys = ["a.b", "a.x.b", "a.x.y.b", "a", "b", "", "a..b", "a.b.c", "x.a.b", ".", "a."]
        expected = {
            "#": keys,
            "a.#.b": ["a.b", "a.x.b", "a.x.y.b", "a..b"],
            "a.*.b": ["a.x.b", "a..b"],
            "*": ["a", "b"],
            "a.#": ["a.b", "a.x.b", "a.x.y.b", "a", "a..b", "a.b.c", "a."],
            "#.b": ["a.b", "a.x.b", "a.x.y.b", "b", "a..b", "x.a.b"],
            "a..b": ["a..b"],
            "*.*": ["a.b", ".", "a."],
            "a.*.#": ["a.b", "a.x.b", "a.x.y.b", "a..b", "a.b.c", "a."],
        }
        queues = {}
        for pattern in expected:
            queues[pattern] = self.declare_queue(ch)
            ch.queue_bind(queues[pattern], x, routing_key=pattern)
        for k in keys:
            ch.basic_publish(x, k, k.encode())
        for pattern, want in expected.items():
            with self.subTest(pattern=pattern):
                self.wait_for_count(ch, queues[pattern], len(want))
                got = [b.decode() for b in self._drain(ch, queues[pattern])]
                self.assertEqual(got, want)

    def test_headers_exchange_match_modes(self):
        ch = self.channel()
        x = self.declare_exchange(ch, "headers")
        bindings = {
            "all": {"x-match": "all", "a": 1, "b": "s"},
            "any": {"x-match": "any", "a": 1, "b": "s"},
            "all-with-x": {"x-match": "all-with-x", "x-k": "v"},
            "any-with-x": {"x-match": "any-with-x", "x-k": "v"},
            # Plain all/any ignore x- arguments: nothing left to match, so "all" takes all.
            "all-ignoring-x": {"x-match": "all", "x-k": "v"},
            "no-args-all": {"x-match": "all"},
            "no-args-any": {"x-match": "any"},
            # A void argument only asks for the header to be present.
            "void-means-present": {"x-match": "all", "a": None},
        }
        messages = {
            "m1": {"a": 1, "b": "s"},
            "m2": {"a": 1},
            "m3": {"x-k": "v"},
            "m4": {},
            "m5": {"a": 2**40},
            "m6": {"a": None},
        }
        expected = {
            "all": ["m1"],
            "any": ["m1", "m2"],
            "all-with-x": ["m3"],
            "any-with-x": ["m3"],
            "all-ignoring-x": list(messages),
            "no-args-all": list(messages),
            "no-args-any": [],
            "void-means-present": ["m1", "m2", "m5", "m6"],
        }
        queues = {}
        for name, args in bindings.items():
            queues[name] = self.declare_queue(ch)
            ch.queue_bind(queues[name], x, arguments=args)
        for body, headers in messages.items():
            ch.basic_publish(x, "", body.encode(), pika.BasicProperties(headers=headers))
        for name, want in expected.items():
            with self.subTest(binding=name):
                self.wait_for_count(ch, queues[name], len(want))
                got = [b.decode() for b in self._drain(ch, queues[name])]
                self.assertEqual(got, want)

    def test_headers_exchange(self):
        ch = self.channel()
        x = self.declare_exchange(ch, "headers")
        all_q = self.declare_queue(ch)
        any_q = self.declare_queue(ch)
        ch.queue_bind(all_q, x, arguments={"x-match": "all", "format": "pdf", "type": "report"})
        ch.queue_bind(any_q, x, arguments={"x-match": "any", "format": "pdf", "type": "report"})

        def pub(body, headers):
            ch.basic_publish(x, "", body, pika.BasicProperties(headers=headers))

        pub(b"both", {"format": "pdf", "type": "report"})
        pub(b"format-only", {"format": "pdf"})
        pub(b"neither", {"format": "zip"})
        pub(b"no-headers", None)
        self._settle(ch, (all_q, 1), (any_q, 2))
        self.assertEqual(self._drain(ch, all_q), [b"both"])
        self.assertEqual(self._drain(ch, any_q), [b"both", b"format-only"])

    def test_exchange_to_exchange_binding(self):
        ch = self.channel()
        src = self.declare_exchange(ch, "topic")
        dst = self.declare_exchange(ch, "fanout")
        q = self.declare_queue(ch)
        ch.exchange_bind(destination=dst, source=src, routing_key="logs.#")
        ch.queue_bind(q, dst)
        ch.basic_publish(src, "logs.error", b"routed twice")
        ch.basic_publish(src, "metrics.cpu", b"not routed")
        self.assertEqual(self.get_message(ch, q, auto_ack=True)[2], b"routed twice")
        ch.exchange_unbind(destination=dst, source=src, routing_key="logs.#")
        ch.basic_publish(src, "logs.error", b"after unbind")
        time.sleep(0.2)
        self.assertEqual(self._drain(ch, q), [])

    def test_alternate_exchange(self):
        ch = self.channel()
        ae = self.declare_exchange(ch, "fanout", prefix="ae")
        x = self.declare_exchange(ch, "direct", arguments={"alternate-exchange": ae})
        routed = self.declare_queue(ch)
        unrouted = self.declare_queue(ch)
        ch.queue_bind(routed, x, routing_key="known")
        ch.queue_bind(unrouted, ae)
        ch.basic_publish(x, "known", b"routed")
        ch.basic_publish(x, "unknown", b"to the AE")
        self.assertEqual(self.get_message(ch, routed, auto_ack=True)[2], b"routed")
        self.assertEqual(self.get_message(ch, unrouted, auto_ack=True)[2], b"to the AE")

    def test_mandatory_unroutable_is_returned(self):
        conn = self.connect()
        ch = conn.channel()
        returned = []
        ch.add_on_return_callback(lambda c, method, props, body: returned.append((method, props, body)))
        x = self.declare_exchange(ch, "direct")
        ch.basic_publish(
            x, "nobody-home", b"bounce", pika.BasicProperties(message_id="m1"), mandatory=True
        )
        self.pump_until(conn, lambda: returned, what="basic.return")
        conn.process_data_events(time_limit=0.1)
        self.assertEqual(len(returned), 1)
        method, props, body = returned[0]
        self.assertEqual(method.reply_code, 312)
        self.assertEqual(method.reply_text, "NO_ROUTE")
        self.assertEqual(method.exchange, x)
        self.assertEqual(method.routing_key, "nobody-home")
        self.assertEqual(props.message_id, "m1")
        self.assertEqual(body, b"bounce")


    def test_cc_and_bcc_headers_add_routing_keys_and_bcc_is_hidden(self):
        ch = self.channel()
        to_q = self.declare_queue(ch, prefix="to")
        cc_q = self.declare_queue(ch, prefix="cc")
        bcc_q = self.declare_queue(ch, prefix="bcc")
        ch.basic_publish(
            "",
            to_q,
            b"memo",
            pika.BasicProperties(headers={"CC": [cc_q], "BCC": [bcc_q], "k": "v"}),
        )
        for q in (to_q, cc_q, bcc_q):
            _, props, body = self.get_message(ch, q, auto_ack=True)
            self.assertEqual(body, b"memo")
            self.assertEqual(props.headers, {"CC": [cc_q], "k": "v"})


class TestProperties(BrokerTestCase):
    def test_properties_round_trip(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        headers = {
            "str": "text",
            "int": 42,
            "negative": -7,
            "big": 2**40,
            "true": True,
            "false": False,
            "bytes": b"\x00\x01\xffraw",
            "decimal": decimal.Decimal("3.14"),
            "nested": {"inner": {"deeper": "yes", "n": 1}, "list": [1, "two", False]},
            "array": [1, 2, 3, "four", {"five": 5}, [6, [7]]],
            "empty-table": {},
            "empty-array": [],
            "void": None,
            "when": datetime.datetime(2020, 2, 29, 12, 34, 56, tzinfo=datetime.timezone.utc),
            "unicode": "h\u00e9llo w\u00f6rld \u2603",
        }
        props = pika.BasicProperties(
            content_type="application/json",
            content_encoding="gzip",
            headers=headers,
            delivery_mode=pika.DeliveryMode.Persistent,
            priority=3,
            correlation_id="corr-1",
            reply_to="reply-queue",
            expiration="600000",
            message_id="msg-1",
            timestamp=1700000000,
            type="order.created",
            user_id="guest",
            app_id="pika-suite",
        )
        ch.basic_publish("", q, b"{}", props)
        _, got, body = self.get_message(ch, q, auto_ack=True)
        self.assertEqual(body, b"{}")
        self.assertEqual(got.content_type, "application/json")
        self.assertEqual(got.content_encoding, "gzip")
        self.assertEqual(got.delivery_mode, 2)
        self.assertEqual(got.priority, 3)
        self.assertEqual(got.correlation_id, "corr-1")
        self.assertEqual(got.reply_to, "reply-queue")
        self.assertEqual(got.expiration, "600000")
        self.assertEqual(got.message_id, "msg-1")
        self.assertEqual(got.timestamp, 1700000000)
        self.assertEqual(got.type, "order.created")
        self.assertEqual(got.user_id, "guest")
        self.assertEqual(got.app_id, "pika-suite")
        self.assertEqual(got.headers, headers)

    def test_absent_properties_stay_absent(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        ch.basic_publish("", q, b"bare")
        _, got, _ = self.get_message(ch, q, auto_ack=True)
        for name in (
            "content_type",
            "content_encoding",
            "headers",
            "delivery_mode",
            "priority",
            "correlation_id",
            "reply_to",
            "expiration",
            "message_id",
            "timestamp",
            "type",
            "user_id",
            "app_id",
            "cluster_id",
        ):
            self.assertIsNone(getattr(got, name), name)

    def test_headers_reach_consumers_too(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        headers = {"k": [1, {"t": True}], "b": b"\x01\x02"}
        ch.basic_publish("", q, b"h", pika.BasicProperties(headers=headers, message_id="via-consume"))
        for method, props, body in ch.consume(q, auto_ack=True, inactivity_timeout=5):
            self.assertIsNotNone(method, "no delivery")
            self.assertEqual(props.headers, headers)
            self.assertEqual(props.message_id, "via-consume")
            break
        ch.cancel()


class TestConsume(BrokerTestCase):
    def test_basic_consume_start_consuming_stops_after_n(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        n = 25
        for i in range(n):
            ch.basic_publish("", q, b"msg-%d" % i)
        received = []

        def on_message(channel, method, properties, body):
            self.assertIsInstance(method, pika.spec.Basic.Deliver)
            self.assertEqual(method.consumer_tag, tag)
            self.assertEqual(method.routing_key, q)
            received.append(body)
            channel.basic_ack(method.delivery_tag)
            if len(received) == n:
                channel.stop_consuming()

        tag = ch.basic_consume(q, on_message)
        self.assertTrue(tag.startswith("ctag"), tag)
        ch.start_consuming()
        self.assertEqual(received, [b"msg-%d" % i for i in range(n)])
        self.assertEqual(ch.consumer_tags, [])  # stop_consuming cancels the consumers
        self.wait_for_count(ch, q, 0)

    def test_consume_with_explicit_consumer_tag_and_cancel(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        tag = ch.basic_consume(q, lambda *a: None, auto_ack=True, consumer_tag="my-tag")
        self.assertEqual(tag, "my-tag")
        self.assertEqual(ch.queue_declare(q, passive=True).method.consumer_count, 1)
        ch.basic_cancel("my-tag")
        self.assertEqual(ch.queue_declare(q, passive=True).method.consumer_count, 0)

    def test_consume_generator_with_inactivity_timeout(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        for i in range(3):
            ch.basic_publish("", q, b"g%d" % i)
        bodies = []
        idle = 0
        started = time.monotonic()
        for method, props, body in ch.consume(q, inactivity_timeout=1):
            if method is None:
                # (None, None, None) after one second without a message.
                self.assertIsNone(props)
                self.assertIsNone(body)
                idle += 1
                break
            bodies.append(body)
            ch.basic_ack(method.delivery_tag)
        elapsed = time.monotonic() - started
        self.assertEqual(bodies, [b"g0", b"g1", b"g2"])
        self.assertEqual(idle, 1)
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertEqual(ch.cancel(), 0)
        self.assertEqual(self.message_count(ch, q), 0)

    def test_generator_cancel_requeues_pending_messages(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        for i in range(5):
            ch.basic_publish("", q, b"p%d" % i)
        self.wait_for_count(ch, q, 5)
        first = None
        for method, _, body in ch.consume(q, inactivity_timeout=2):
            self.assertIsNotNone(method)
            first = body
            ch.basic_ack(method.delivery_tag)
            break
        self.assertEqual(first, b"p0")
        # Let the rest arrive unacked in pika's buffer, then cancel: pika nacks them back.
        self.pump_until(conn, lambda: ch.get_waiting_message_count() == 4, what="4 buffered")
        ch.cancel()  # pika 1.x always returns 0 here
        self.wait_for_count(ch, q, 4)
        method, _, body = ch.basic_get(q, auto_ack=True)
        self.assertEqual(body, b"p1")
        self.assertTrue(method.redelivered)

    def test_two_consumers_share_a_queue_round_robin(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        seen = {"a": [], "b": []}
        total = 10

        def make(name):
            def cb(channel, method, props, body):
                seen[name].append(body)
                channel.basic_ack(method.delivery_tag)
                if len(seen["a"]) + len(seen["b"]) == total:
                    channel.stop_consuming()

            return cb

        ch.basic_qos(prefetch_count=1)
        ch.basic_consume(q, make("a"))
        ch.basic_consume(q, make("b"))
        for i in range(total):
            ch.basic_publish("", q, b"%d" % i)
        ch.start_consuming()
        self.assertEqual(len(seen["a"]) + len(seen["b"]), total)
        self.assertGreater(len(seen["a"]), 0)
        self.assertGreater(len(seen["b"]), 0)

    def test_closing_channel_requeues_unacked_deliveries(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        ch.basic_publish("", q, b"unacked")
        method, _, _ = self.get_message(ch, q)
        self.assertFalse(method.redelivered)
        ch.close()
        ch2 = conn.channel()
        method, _, body = self.get_message(ch2, q, auto_ack=True)
        self.assertEqual(body, b"unacked")
        self.assertTrue(method.redelivered)

    def test_consumer_is_told_when_its_queue_is_deleted(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        cancelled = []
        ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
        tag = ch.basic_consume(q, lambda *a: None)
        self.channel().queue_delete(q)
        self.pump_until(conn, lambda: cancelled, what="basic.cancel from the broker")
        self.assertEqual(cancelled, [tag])
        self.assertTrue(ch.is_open)

    def test_single_active_consumer(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch, arguments={"x-single-active-consumer": True})
        first, second = [], []
        tag1 = ch.basic_consume(q, lambda c, m, p, b: first.append(b), auto_ack=True)
        ch.basic_consume(q, lambda c, m, p, b: second.append(b), auto_ack=True)
        for i in range(4):
            ch.basic_publish("", q, b"%d" % i)
        self.pump_until(conn, lambda: len(first) + len(second) >= 4, what="4 deliveries")
        self.assertEqual((first, second), ([b"0", b"1", b"2", b"3"], []))
        # When the active one goes, the next takes over.
        ch.basic_cancel(tag1)
        ch.basic_publish("", q, b"4")
        self.pump_until(conn, lambda: second, what="delivery to the next consumer")
        self.assertEqual(second, [b"4"])

    def test_exclusive_consumer_blocks_other_consumers(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        ch.basic_consume(q, lambda *a: None, exclusive=True)
        other = self.channel()
        with self.assertChannelClosed(
            403,
            "ACCESS_REFUSED - queue '%s' in vhost '/' in exclusive use" % q,
        ):
            other.basic_consume(q, lambda *a: None)


class TestAcks(BrokerTestCase):
    def _publish(self, ch, q, n):
        for i in range(n):
            ch.basic_publish("", q, b"m%d" % i)
        self.wait_for_count(ch, q, n)

    def test_nack_requeue_redelivers(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        self._publish(ch, q, 1)
        method, _, body = ch.basic_get(q)
        self.assertFalse(method.redelivered)
        ch.basic_nack(method.delivery_tag, requeue=True)
        method, _, body2 = self.get_message(ch, q)
        self.assertEqual(body2, body)
        self.assertTrue(method.redelivered)
        ch.basic_ack(method.delivery_tag)
        self.assertEqual(self.message_count(ch, q), 0)

    def test_nack_without_requeue_drops(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        self._publish(ch, q, 1)
        method, _, _ = ch.basic_get(q)
        ch.basic_nack(method.delivery_tag, requeue=False)
        self.assertEqual(self.message_count(ch, q), 0)
        self.assertEqual(ch.basic_get(q), (None, None, None))

    def test_nack_multiple(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        self._publish(ch, q, 3)
        tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
        self.assertEqual(tags, [1, 2, 3])
        ch.basic_nack(tags[1], multiple=True, requeue=True)  # tags 1 and 2
        self.wait_for_count(ch, q, 2)
        ch.basic_ack(tags[2])
        bodies = [self.get_message(ch, q, auto_ack=True)[2] for _ in range(2)]
        self.assertEqual(bodies, [b"m0", b"m1"])  # requeued at their original position

    def test_reject_requeue_and_discard(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        self._publish(ch, q, 2)
        m1, _, b1 = ch.basic_get(q)
        m2, _, b2 = ch.basic_get(q)
        ch.basic_reject(m1.delivery_tag, requeue=True)
        ch.basic_reject(m2.delivery_tag, requeue=False)
        self.wait_for_count(ch, q, 1)
        method, _, body = ch.basic_get(q, auto_ack=True)
        self.assertEqual(body, b1)
        self.assertTrue(method.redelivered)

    def test_ack_multiple(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        self._publish(ch, q, 4)
        tags = [ch.basic_get(q)[0].delivery_tag for _ in range(4)]
        ch.basic_ack(tags[2], multiple=True)
        ch.close()  # the 4th goes back
        ch2 = self.channel()
        self.wait_for_count(ch2, q, 1)
        self.assertEqual(ch2.basic_get(q, auto_ack=True)[2], b"m3")

    def test_basic_recover_requeues_unacked(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        self._publish(ch, q, 2)
        ch.basic_get(q)
        ch.basic_get(q)
        ch.basic_recover(requeue=True)
        self.wait_for_count(ch, q, 2)
        method, _, body = ch.basic_get(q, auto_ack=True)
        self.assertTrue(method.redelivered)
        self.assertEqual(body, b"m0")

    def test_basic_qos_prefetch_limits_unacked_deliveries(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        self._publish(ch, q, 10)
        ch.basic_qos(prefetch_count=3)
        delivered = []
        ch.basic_consume(q, lambda c, m, p, b: delivered.append(m))

        def settle(expected):
            self.pump_until(conn, lambda: len(delivered) >= expected, what="%d deliveries" % expected)
            conn.process_data_events(time_limit=0.3)  # and no more than that
            self.assertEqual(len(delivered), expected)

        settle(3)
        ch.basic_ack(delivered[0].delivery_tag)
        settle(4)
        ch.basic_ack(delivered[3].delivery_tag, multiple=True)
        settle(7)

    def test_prefetch_does_not_limit_auto_ack_consumers(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        self._publish(ch, q, 10)
        ch.basic_qos(prefetch_count=1)
        delivered = []
        ch.basic_consume(q, lambda c, m, p, b: delivered.append(b), auto_ack=True)
        self.pump_until(conn, lambda: len(delivered) == 10, what="10 deliveries")


class TestRpc(BrokerTestCase):
    def test_rpc_with_reply_to_and_correlation_id(self):
        server_conn = self.connect()
        server = server_conn.channel()
        rpc_q = self.declare_queue(server, prefix="rpc")

        client_conn = self.connect()
        client = client_conn.channel()
        reply_q = client.queue_declare("", exclusive=True).method.queue
        self.assertTrue(reply_q.startswith("amq.gen-"), reply_q)

        responses = {}

        def on_response(ch, method, props, body):
            responses[props.correlation_id] = body

        client.basic_consume(reply_q, on_response, auto_ack=True)

        requests = {}
        for n in (3, 10, 20):
            corr = str(uuid.uuid4())
            requests[corr] = n
            client.basic_publish(
                "",
                rpc_q,
                str(n).encode(),
                pika.BasicProperties(reply_to=reply_q, correlation_id=corr),
            )

        # The "server": squares each request and answers on reply_to.
        served = 0
        while served < len(requests):
            method, props, body = self.get_message(server, rpc_q)
            server.basic_publish(
                "",
                props.reply_to,
                str(int(body) ** 2).encode(),
                pika.BasicProperties(correlation_id=props.correlation_id),
            )
            server.basic_ack(method.delivery_tag)
            served += 1

        self.pump_until(client_conn, lambda: len(responses) == len(requests), what="replies")
        self.assertEqual(
            responses, {corr: str(n * n).encode() for corr, n in requests.items()}
        )

    def test_direct_reply_to(self):
        server_conn = self.connect()
        server = server_conn.channel()
        rpc_q = self.declare_queue(server, prefix="rpc")

        client_conn = self.connect()
        client = client_conn.channel()
        replies = []
        client.basic_consume(
            "amq.rabbitmq.reply-to",
            lambda ch, m, p, b: replies.append((p.correlation_id, b)),
            auto_ack=True,
        )
        client.basic_publish(
            "",
            rpc_q,
            b"ping",
            pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="c-1"),
        )
        method, props, body = self.get_message(server, rpc_q, auto_ack=True)
        self.assertEqual(body, b"ping")
        # The broker rewrites the pseudo-queue name into a routable one.
        self.assertTrue(props.reply_to.startswith("amq.rabbitmq.reply-to."), props.reply_to)
        server.basic_publish(
            "", props.reply_to, b"pong", pika.BasicProperties(correlation_id=props.correlation_id)
        )
        self.pump_until(client_conn, lambda: replies, what="the reply")
        self.assertEqual(replies, [("c-1", b"pong")])

    def test_direct_reply_to_request_without_reply_consumer_is_refused(self):
        ch = self.channel()
        q = self.declare_queue(ch, prefix="rpc")
        with self.assertChannelClosed(
            406, "PRECONDITION_FAILED - fast reply consumer does not exist"
        ):
            ch.basic_publish("", q, b"ping", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
            ch.basic_get(q, auto_ack=True)

    def test_direct_reply_to_pseudo_queue_passively_exists(self):
        ch = self.channel()
        ok = ch.queue_declare("amq.rabbitmq.reply-to", passive=True)
        self.assertEqual(ok.method.queue, "amq.rabbitmq.reply-to")
        self.assertEqual(ok.method.message_count, 0)

    def test_direct_reply_to_consumer_must_be_no_ack(self):
        ch = self.channel()
        with self.assertChannelClosed(
            406, "PRECONDITION_FAILED - reply consumer cannot acknowledge"
        ):
            ch.basic_consume("amq.rabbitmq.reply-to", lambda *a: None, auto_ack=False)

    def test_exclusive_reply_queue_disappears_with_its_connection(self):
        conn = self.connect()
        reply_q = conn.channel().queue_declare("", exclusive=True).method.queue
        conn.close()
        ch = self.channel()
        with self.assertChannelClosed(404, "NOT_FOUND - no queue '%s' in vhost '/'" % reply_q):
            ch.queue_declare(reply_q, passive=True)


if __name__ == "__main__":
    unittest.main()
