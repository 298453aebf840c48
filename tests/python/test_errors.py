"""What a pika user sees when the broker refuses something: RabbitMQ's reply codes and texts."""

import time
import unittest

import pika
import pika.exceptions

from warren_support import BrokerTestCase, params, unique

LOCKED = (
    "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '%s' in vhost '/'. "
    "It could be originally declared on another connection or the exclusive property value "
    "does not match that of the original declaration."
)


class TestNotFound(BrokerTestCase):
    def test_passive_declare_of_missing_queue(self):
        ch = self.channel()
        q = unique("missing")
        with self.assertChannelClosed(404, "NOT_FOUND - no queue '%s' in vhost '/'" % q):
            ch.queue_declare(q, passive=True)
        self.assertTrue(ch.is_closed)

    def test_passive_declare_of_missing_exchange(self):
        ch = self.channel()
        x = unique("missing")
        with self.assertChannelClosed(404, "NOT_FOUND - no exchange '%s' in vhost '/'" % x):
            ch.exchange_declare(x, passive=True)

    def test_publish_to_missing_exchange_closes_the_channel(self):
        ch = self.channel()
        x = unique("missing")
        with self.assertChannelClosed(404, "NOT_FOUND - no exchange '%s' in vhost '/'" % x):
            ch.basic_publish(x, "rk", b"lost")
            # basic_publish is asynchronous: the close surfaces on the next synchronous call.
            ch.queue_declare("", exclusive=True)

    def test_bind_to_missing_exchange_or_queue(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        x = unique("missing")
        with self.assertChannelClosed(404, "NOT_FOUND - no exchange '%s' in vhost '/'" % x):
            ch.queue_bind(q, x, routing_key="k")
        ch = conn.channel()
        x = self.declare_exchange(ch)
        missing_q = unique("missing")
        with self.assertChannelClosed(404, "NOT_FOUND - no queue '%s' in vhost '/'" % missing_q):
            ch.queue_bind(missing_q, x, routing_key="k")

    def test_exchange_bind_to_missing_source(self):
        ch = self.channel()
        dst = self.declare_exchange(ch)
        src = unique("missing")
        with self.assertChannelClosed(404, "NOT_FOUND - no exchange '%s' in vhost '/'" % src):
            ch.exchange_bind(destination=dst, source=src, routing_key="k")

    def test_consume_and_get_from_missing_queue(self):
        conn = self.connect()
        q = unique("missing")
        ch = conn.channel()
        with self.assertChannelClosed(404, "NOT_FOUND - no queue '%s' in vhost '/'" % q):
            ch.basic_consume(q, lambda *a: None)
        ch = conn.channel()
        with self.assertChannelClosed(404, "NOT_FOUND - no queue '%s' in vhost '/'" % q):
            ch.basic_get(q)
        ch = conn.channel()
        with self.assertChannelClosed(404, "NOT_FOUND - no queue '%s' in vhost '/'" % q):
            ch.queue_purge(q)

    def test_connection_survives_a_channel_error(self):
        conn = self.connect()
        ch = conn.channel()
        with self.assertChannelClosed(404):
            ch.queue_declare(unique("missing"), passive=True)
        self.assertTrue(conn.is_open)
        ch2 = conn.channel()
        q = self.declare_queue(ch2)
        ch2.basic_publish("", q, b"still fine")
        self.assertEqual(self.get_message(ch2, q, auto_ack=True)[2], b"still fine")


class TestPreconditionFailed(BrokerTestCase):
    def test_inequivalent_queue_durable(self):
        ch = self.channel()
        q = self.declare_queue(ch, durable=True)
        with self.assertChannelClosed(
            406,
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '%s' in vhost '/': "
            "received 'false' but current is 'true'" % q,
        ):
            ch.queue_declare(q, durable=False)

    def test_inequivalent_queue_auto_delete(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        with self.assertChannelClosed(
            406,
            "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue '%s' in vhost '/': "
            "received 'true' but current is 'false'" % q,
        ):
            ch.queue_declare(q, auto_delete=True)

    def test_inequivalent_queue_argument_value(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch, arguments={"x-message-ttl": 1000})
        with self.assertChannelClosed(
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '%s' in vhost '/': "
            "received '2000' but current is '1000'" % q,
        ):
            ch.queue_declare(q, arguments={"x-message-ttl": 2000})
        ch = conn.channel()
        with self.assertChannelClosed(
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '%s' in vhost '/': "
            "received none but current is the value '1000' of type 'signedint'" % q,
        ):
            ch.queue_declare(q)
        # A passive declare does not compare anything.
        ch = conn.channel()
        self.assertEqual(ch.queue_declare(q, passive=True).method.queue, q)

    def test_invalid_queue_arguments(self):
        # rabbit_amqqueue's argument checks, reasons printed as Erlang terms.
        conn = self.connect()
        cases = (
            ({"x-message-ttl": "soon"}, "x-message-ttl", '"expected integer, got longstr"'),
            ({"x-message-ttl": -1}, "x-message-ttl", "{value_negative,-1}"),
            ({"x-expires": 0}, "x-expires", "{value_zero,0}"),
            ({"x-max-length": -1}, "x-max-length", "{value_negative,-1}"),
            ({"x-max-priority": 300}, "x-max-priority", "{max_value_exceeded,300}"),
            ({"x-overflow": "sideways"}, "x-overflow", "invalid_overflow"),
            ({"x-dead-letter-exchange": 5}, "x-dead-letter-exchange", "{unacceptable_type,signedint}"),
            (
                {"x-dead-letter-routing-key": "k"},
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined",
            ),
            (
                {"x-single-active-consumer": "yes"},
                "x-single-active-consumer",
                "{unacceptable_type,longstr}",
            ),
        )
        for arguments, key, why in cases:
            with self.subTest(key=key, arguments=arguments):
                q = unique("badarg")
                ch = conn.channel()
                with self.assertChannelClosed(
                    406,
                    "PRECONDITION_FAILED - invalid arg '%s' for queue '%s' in vhost '/': %s"
                    % (key, q, why),
                ):
                    ch.queue_declare(q, arguments=arguments)
                # Nothing was created.
                ch = conn.channel()
                with self.assertChannelClosed(404):
                    ch.queue_declare(q, passive=True)

    def test_inequivalent_exchange_type(self):
        ch = self.channel()
        x = self.declare_exchange(ch, "direct")
        with self.assertChannelClosed(
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '%s' in vhost '/': "
            "received 'fanout' but current is 'direct'" % x,
        ):
            ch.exchange_declare(x, exchange_type="fanout")

    def test_inequivalent_exchange_durable(self):
        ch = self.channel()
        x = self.declare_exchange(ch, "topic")
        with self.assertChannelClosed(
            406,
            "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange '%s' in vhost '/': "
            "received 'true' but current is 'false'" % x,
        ):
            ch.exchange_declare(x, exchange_type="topic", durable=True)

    def test_unknown_exchange_type(self):
        # As in pika's own acceptance test (TestInvalidExchangeTypeRaisesConnectionClosed):
        # a channel close with 406. RabbitMQ (rabbit_exchange:check_type) says "unknown
        # exchange type" for a name it has never heard of.
        conn = self.connect()
        ch = conn.channel()
        x = unique("badtype")
        with self.assertChannelClosed(
            406, "PRECONDITION_FAILED - invalid exchange type 'ZZwwInvalid'"
        ):
            ch.exchange_declare(x, exchange_type="ZZwwInvalid")
        self.assertTrue(conn.is_open)
        ch = conn.channel()
        with self.assertChannelClosed(404):
            ch.exchange_declare(x, passive=True)

    def test_queue_delete_if_empty(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        ch.basic_publish("", q, b"keep me")
        self.wait_for_count(ch, q, 1)
        with self.assertChannelClosed(
            406, "PRECONDITION_FAILED - queue '%s' in vhost '/' not empty" % q
        ):
            ch.queue_delete(q, if_empty=True)
        ch = self.channel()
        self.assertEqual(self.message_count(ch, q), 1)
        ch.queue_purge(q)
        self.assertEqual(ch.queue_delete(q, if_empty=True).method.message_count, 0)

    def test_queue_delete_if_unused(self):
        conn = self.connect()
        consumer = conn.channel()
        q = self.declare_queue(consumer)
        tag = consumer.basic_consume(q, lambda *a: None)
        ch = conn.channel()
        with self.assertChannelClosed(
            406, "PRECONDITION_FAILED - queue '%s' in vhost '/' in use" % q
        ):
            ch.queue_delete(q, if_unused=True)
        consumer.basic_cancel(tag)
        ch = conn.channel()
        ch.queue_delete(q, if_unused=True)

    def test_exchange_delete_if_unused(self):
        conn = self.connect()
        ch = conn.channel()
        x = self.declare_exchange(ch)
        q = self.declare_queue(ch)
        ch.queue_bind(q, x, routing_key="k")
        with self.assertChannelClosed(
            406, "PRECONDITION_FAILED - exchange '%s' in vhost '/' in use" % x
        ):
            ch.exchange_delete(x, if_unused=True)
        ch = conn.channel()
        ch.queue_unbind(q, x, routing_key="k")
        ch.exchange_delete(x, if_unused=True)

    def test_unknown_delivery_tag(self):
        ch = self.channel()
        with self.assertChannelClosed(406, "PRECONDITION_FAILED - unknown delivery tag 42"):
            ch.basic_ack(42)
            ch.queue_declare("", exclusive=True)

    def test_double_ack(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        ch.basic_publish("", q, b"once")
        method, _, _ = self.get_message(ch, q)
        ch.basic_ack(method.delivery_tag)
        with self.assertChannelClosed(
            406, "PRECONDITION_FAILED - unknown delivery tag %d" % method.delivery_tag
        ):
            ch.basic_ack(method.delivery_tag)
            ch.queue_declare("", exclusive=True)

    def test_ack_of_auto_acked_delivery(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        ch.basic_publish("", q, b"auto")
        method, _, _ = self.get_message(ch, q, auto_ack=True)
        with self.assertChannelClosed(
            406, "PRECONDITION_FAILED - unknown delivery tag %d" % method.delivery_tag
        ):
            ch.basic_reject(method.delivery_tag)
            ch.queue_declare("", exclusive=True)

    def test_user_id_must_match_the_connection_user(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        with self.assertChannelClosed(
            406,
            "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was "
            "'guest'",
        ):
            ch.basic_publish("", q, b"spoof", pika.BasicProperties(user_id="mallory"))
            ch.queue_declare("", exclusive=True)

    def test_invalid_expiration(self):
        conn = self.connect()
        for expiration, why in (
            ("soon", "no_integer"),
            ("-5", "{value_negative,-5}"),
            ("10s", '{leftover_string,"s"}'),
        ):
            with self.subTest(expiration):
                ch = conn.channel()
                q = self.declare_queue(ch)
                with self.assertChannelClosed(
                    406,
                    "PRECONDITION_FAILED - invalid expiration '%s': %s" % (expiration, why),
                ):
                    ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=expiration))
                    ch.queue_declare("", exclusive=True)

    def test_tx_commit_without_select(self):
        ch = self.channel()
        with self.assertChannelClosed(406, "PRECONDITION_FAILED - channel is not transactional"):
            ch.tx_commit()
        ch = self.channel()
        with self.assertChannelClosed(406, "PRECONDITION_FAILED - channel is not transactional"):
            ch.tx_rollback()

    def test_confirm_and_tx_do_not_mix(self):
        conn = self.connect()
        ch = conn.channel()
        ch.confirm_delivery()
        with self.assertChannelClosed(
            406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode"
        ):
            ch.tx_select()
        ch = conn.channel()
        ch.tx_select()
        with self.assertChannelClosed(
            406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode"
        ):
            ch.confirm_delivery()


class TestNotImplemented(BrokerTestCase):
    def test_prefetch_size_is_not_implemented(self):
        conn = self.connect()
        ch = conn.channel()
        with self.assertConnectionClosed(540, "NOT_IMPLEMENTED - prefetch_size!=0 (4096)"):
            ch.basic_qos(prefetch_size=4096, prefetch_count=10)
        self.assertTrue(conn.is_closed)

    def test_recover_without_requeue_is_not_implemented(self):
        conn = self.connect()
        ch = conn.channel()
        with self.assertConnectionClosed(540, "NOT_IMPLEMENTED - requeue=false"):
            ch.basic_recover(requeue=False)


class TestAccessRefused(BrokerTestCase):
    def test_reserved_exchange_name(self):
        ch = self.channel()
        with self.assertChannelClosed(
            403, "ACCESS_REFUSED - exchange name 'amq.custom' contains reserved prefix 'amq.*'"
        ):
            ch.exchange_declare("amq.custom", exchange_type="direct")

    def test_reserved_queue_name(self):
        ch = self.channel()
        with self.assertChannelClosed(
            403, "ACCESS_REFUSED - queue name 'amq.custom' contains reserved prefix 'amq.*'"
        ):
            ch.queue_declare("amq.custom")

    def test_builtin_exchanges_exist(self):
        ch = self.channel()
        for name in ("amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"):
            ch.exchange_declare(name, passive=True)
        # Re-declaring one with its own properties is allowed; only creating amq.* is not.
        ch.exchange_declare("amq.direct", exchange_type="direct", durable=True)
        ch.exchange_declare("amq.topic", exchange_type="topic", durable=True)

    def test_system_exchanges_cannot_be_deleted(self):
        ch = self.channel()
        with self.assertChannelClosed(
            403, "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"
        ):
            ch.exchange_delete("amq.direct")
        ch = self.channel()
        ch.exchange_declare("amq.direct", passive=True)

    def test_default_exchange_is_off_limits(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        with self.assertChannelClosed(
            403, "ACCESS_REFUSED - operation not permitted on the default exchange"
        ):
            ch.queue_bind(q, "", routing_key="other")
        ch = conn.channel()
        with self.assertChannelClosed(
            403, "ACCESS_REFUSED - operation not permitted on the default exchange"
        ):
            ch.exchange_delete("")
        ch = conn.channel()
        with self.assertChannelClosed(
            403, "ACCESS_REFUSED - operation not permitted on the default exchange"
        ):
            ch.exchange_declare("", exchange_type="direct", passive=True)
        # Publishing through it is what it is for.
        ch = conn.channel()
        ch.basic_publish("", q, b"via default")
        self.assertEqual(self.get_message(ch, q, auto_ack=True)[2], b"via default")

    def test_publish_to_internal_exchange(self):
        ch = self.channel()
        x = self.declare_exchange(ch, "topic", internal=True)
        with self.assertChannelClosed(
            403, "ACCESS_REFUSED - cannot publish to internal exchange '%s' in vhost '/'" % x
        ):
            ch.basic_publish(x, "k", b"no")
            ch.queue_declare("", exclusive=True)

    def test_exclusive_consume_on_a_queue_with_consumers(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        ch.basic_consume(q, lambda *a: None)
        other = conn.channel()
        with self.assertChannelClosed(
            403, "ACCESS_REFUSED - queue '%s' in vhost '/' in exclusive use" % q
        ):
            other.basic_consume(q, lambda *a: None, exclusive=True)

    def test_wrong_password(self):
        with self.assertRaises(pika.exceptions.ProbableAuthenticationError) as cm:
            pika.BlockingConnection(params(password="not-the-password"))
        self.assertIn(
            "(403) 'ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
            "For details see the broker logfile.'",
            str(cm.exception),
        )

    def test_unknown_user(self):
        with self.assertRaises(pika.exceptions.ProbableAuthenticationError) as cm:
            pika.BlockingConnection(params(username="nobody-%d" % time.time_ns()))
        self.assertIn("(403) 'ACCESS_REFUSED - Login was refused", str(cm.exception))

    def test_unknown_vhost(self):
        with self.assertRaises(pika.exceptions.ProbableAccessDeniedError) as cm:
            pika.BlockingConnection(params(virtual_host="no-such-vhost"))
        self.assertIn("(530) 'NOT_ALLOWED - vhost no-such-vhost not found'", str(cm.exception))


class TestExclusiveQueues(BrokerTestCase):
    def test_exclusive_queue_is_locked_to_its_connection(self):
        owner = self.connect()
        och = owner.channel()
        q = self.declare_queue(och, exclusive=True)
        och.basic_publish("", q, b"mine")
        self.wait_for_count(och, q, 1)

        other = self.connect()
        attempts = {
            "declare": lambda ch: ch.queue_declare(q, exclusive=True),
            "declare non-exclusive": lambda ch: ch.queue_declare(q),
            "passive declare": lambda ch: ch.queue_declare(q, passive=True),
            "consume": lambda ch: ch.basic_consume(q, lambda *a: None),
            "get": lambda ch: ch.basic_get(q),
            "purge": lambda ch: ch.queue_purge(q),
            "delete": lambda ch: ch.queue_delete(q),
        }
        for what, attempt in attempts.items():
            with self.subTest(what):
                ch = other.channel()
                with self.assertChannelClosed(405, LOCKED % q):
                    attempt(ch)
        # Still intact for its owner.
        self.assertEqual(self.get_message(och, q, auto_ack=True)[2], b"mine")

    def test_redeclaring_a_shared_queue_as_exclusive(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        with self.assertChannelClosed(405, LOCKED % q):
            ch.queue_declare(q, exclusive=True)

    def test_exclusive_queue_is_deleted_with_its_connection(self):
        owner = self.connect()
        q = unique("excl")
        owner.channel().queue_declare(q, exclusive=True)
        owner.close()
        ch = self.channel()
        with self.assertChannelClosed(404, "NOT_FOUND - no queue '%s' in vhost '/'" % q):
            ch.queue_declare(q, passive=True)


if __name__ == "__main__":
    unittest.main()
