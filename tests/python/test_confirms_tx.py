"""Publisher confirms (pika's confirm_delivery) and AMQP transactions (tx_select/commit/rollback)."""

import time
import unittest

import pika
import pika.exceptions

from warren_support import BrokerTestCase, unique


class TestConfirms(BrokerTestCase):
    def test_confirmed_publishes_all_arrive(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch, durable=True)
        ch.confirm_delivery()
        for i in range(200):
            # With confirms on, basic_publish returns only once the broker acked the message.
            ch.basic_publish(
                "",
                q,
                b"c%d" % i,
                pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
            )
        self.assertEqual(self.message_count(ch, q), 200)

    def test_mandatory_unroutable_raises_unroutable_error(self):
        ch = self.channel()
        x = self.declare_exchange(ch, "direct")
        ch.confirm_delivery()
        with self.assertRaises(pika.exceptions.UnroutableError) as cm:
            ch.basic_publish(
                x, "no-binding", b"returned", pika.BasicProperties(message_id="u1"), mandatory=True
            )
        returned = cm.exception.messages
        self.assertEqual(len(returned), 1)
        self.assertEqual(returned[0].method.reply_code, 312)
        self.assertEqual(returned[0].method.reply_text, "NO_ROUTE")
        self.assertEqual(returned[0].method.exchange, x)
        self.assertEqual(returned[0].method.routing_key, "no-binding")
        self.assertEqual(returned[0].properties.message_id, "u1")
        self.assertEqual(returned[0].body, b"returned")
        # The channel stays usable.
        self.assertTrue(ch.is_open)
        q = self.declare_queue(ch)
        ch.basic_publish("", q, b"fine", mandatory=True)
        self.assertEqual(self.message_count(ch, q), 1)

    def test_non_mandatory_unroutable_is_simply_confirmed(self):
        ch = self.channel()
        x = self.declare_exchange(ch, "topic")
        ch.confirm_delivery()
        ch.basic_publish(x, "nobody.listens", b"dropped")  # no exception
        self.assertTrue(ch.is_open)

    def test_mandatory_routed_message_is_not_returned(self):
        ch = self.channel()
        x = self.declare_exchange(ch, "direct")
        q = self.declare_queue(ch)
        ch.queue_bind(q, x, routing_key="k")
        ch.confirm_delivery()
        ch.basic_publish(x, "k", b"routed", mandatory=True)
        self.assertEqual(self.get_message(ch, q, auto_ack=True)[2], b"routed")

    def test_reject_publish_overflow_is_nacked(self):
        ch = self.channel()
        q = self.declare_queue(
            ch, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
        )
        ch.confirm_delivery()
        ch.basic_publish("", q, b"1")
        ch.basic_publish("", q, b"2")
        with self.assertRaises(pika.exceptions.NackError):
            ch.basic_publish("", q, b"3")
        self.assertEqual(self.message_count(ch, q), 2)
        self.assertEqual(ch.basic_get(q, auto_ack=True)[2], b"1")
        ch.basic_publish("", q, b"4")  # room again
        self.assertEqual(self.message_count(ch, q), 2)

    def test_publish_to_missing_exchange_with_confirms(self):
        ch = self.channel()
        ch.confirm_delivery()
        x = unique("missing")
        with self.assertChannelClosed(404, "NOT_FOUND - no exchange '%s' in vhost '/'" % x):
            ch.basic_publish(x, "k", b"lost")

    def test_confirms_on_several_channels(self):
        conn = self.connect()
        q = self.declare_queue(conn.channel())
        channels = [conn.channel() for _ in range(4)]
        for ch in channels:
            ch.confirm_delivery()
        for i in range(25):
            for n, ch in enumerate(channels):
                ch.basic_publish("", q, b"%d-%d" % (n, i))
        self.assertEqual(self.message_count(channels[0], q), 100)


class TestTransactions(BrokerTestCase):
    def test_commit_makes_publishes_visible(self):
        conn = self.connect()
        ch = conn.channel()
        observer = conn.channel()
        q = self.declare_queue(ch)
        ch.tx_select()
        for i in range(3):
            ch.basic_publish("", q, b"t%d" % i)
        time.sleep(0.2)
        self.assertEqual(self.message_count(observer, q), 0)
        ch.tx_commit()
        self.assertEqual(self.message_count(observer, q), 3)
        bodies = [observer.basic_get(q, auto_ack=True)[2] for _ in range(3)]
        self.assertEqual(bodies, [b"t0", b"t1", b"t2"])

    def test_rollback_discards_publishes(self):
        conn = self.connect()
        ch = conn.channel()
        observer = conn.channel()
        q = self.declare_queue(ch)
        ch.tx_select()
        ch.basic_publish("", q, b"never")
        ch.tx_rollback()
        time.sleep(0.2)
        self.assertEqual(self.message_count(observer, q), 0)
        # The channel stays transactional: the next batch needs its own commit.
        ch.basic_publish("", q, b"later")
        time.sleep(0.2)
        self.assertEqual(self.message_count(observer, q), 0)
        ch.tx_commit()
        self.assertEqual(self.message_count(observer, q), 1)

    def test_acks_are_transactional(self):
        conn = self.connect()
        q = self.declare_queue(conn.channel())
        setup = conn.channel()
        setup.basic_publish("", q, b"a")
        setup.basic_publish("", q, b"b")
        self.wait_for_count(setup, q, 2)

        ch = conn.channel()
        ch.tx_select()
        ma, _, _ = ch.basic_get(q)
        mb, _, _ = ch.basic_get(q)
        ch.basic_ack(ma.delivery_tag)
        ch.tx_rollback()  # the ack of "a" is forgotten: "a" is still unacked
        ch.basic_ack(mb.delivery_tag)
        ch.tx_commit()  # "b" is gone for good
        ch.close()  # "a" goes back to the queue

        ch = conn.channel()
        self.wait_for_count(ch, q, 1)
        method, _, body = ch.basic_get(q, auto_ack=True)
        self.assertEqual(body, b"a")
        self.assertTrue(method.redelivered)

    def test_reject_is_transactional(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        ch.basic_publish("", q, b"r")
        self.wait_for_count(ch, q, 1)
        ch.tx_select()
        method, _, _ = ch.basic_get(q)
        ch.basic_reject(method.delivery_tag, requeue=True)
        time.sleep(0.2)
        observer = conn.channel()
        self.assertEqual(self.message_count(observer, q), 0)
        ch.tx_commit()
        self.wait_for_count(observer, q, 1)

    def test_mandatory_unroutable_in_tx_is_returned_on_commit(self):
        conn = self.connect()
        ch = conn.channel()
        returned = []
        ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, b)))
        x = self.declare_exchange(ch, "direct")
        ch.tx_select()
        ch.basic_publish(x, "nowhere", b"bounce", mandatory=True)
        ch.tx_commit()
        self.pump_until(conn, lambda: returned, what="basic.return after commit")
        self.assertEqual(len(returned), 1)
        self.assertEqual(returned[0][0].reply_code, 312)
        self.assertEqual(returned[0][1], b"bounce")

    def test_closing_a_channel_with_open_tx_discards_it(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        ch.tx_select()
        ch.basic_publish("", q, b"uncommitted")
        ch.close()
        observer = conn.channel()
        time.sleep(0.2)
        self.assertEqual(self.message_count(observer, q), 0)


if __name__ == "__main__":
    unittest.main()
