"""Dead-lettering (x-death as pika decodes it), TTLs, max-length, priorities, queue expiry."""

import datetime
import time
import unittest

import pika
import pika.exceptions

from warren_support import BrokerTestCase


class DeadLetterCase(BrokerTestCase):
    def dlx_pair(self, ch, **queue_args):
        """A fanout DLX with a bound dead-letter queue, and a work queue dead-lettering to it."""
        dlx = self.declare_exchange(ch, "fanout", prefix="dlx")
        dlq = self.declare_queue(ch, prefix="dlq")
        ch.queue_bind(dlq, dlx)
        args = {"x-dead-letter-exchange": dlx}
        args.update(queue_args)
        q = self.declare_queue(ch, arguments=args)
        return q, dlx, dlq

    def assertDeath(self, death, queue, reason, exchange, routing_keys, count=1):
        self.assertEqual(death["count"], count)
        self.assertEqual(death["reason"], reason)
        self.assertEqual(death["queue"], queue)
        self.assertEqual(death["exchange"], exchange)
        self.assertEqual(death["routing-keys"], routing_keys)
        self.assertIsInstance(death["time"], datetime.datetime)
        now = datetime.datetime.now(datetime.timezone.utc)
        self.assertLess(abs((now - death["time"]).total_seconds()), 60)


class TestDeadLettering(DeadLetterCase):
    def test_rejected_message_gets_x_death(self):
        ch = self.channel()
        q, dlx, dlq = self.dlx_pair(ch)
        ch.basic_publish(
            "",
            q,
            b"bad",
            pika.BasicProperties(message_id="m-1", headers={"mine": "kept"}),
        )
        method, _, _ = self.get_message(ch, q)
        ch.basic_reject(method.delivery_tag, requeue=False)

        method, props, body = self.get_message(ch, dlq, auto_ack=True)
        self.assertEqual(body, b"bad")
        self.assertEqual(method.exchange, dlx)
        self.assertEqual(method.routing_key, q)
        self.assertEqual(props.message_id, "m-1")
        headers = props.headers
        self.assertEqual(headers["mine"], "kept")
        self.assertEqual(len(headers["x-death"]), 1)
        self.assertDeath(headers["x-death"][0], q, "rejected", "", [q])
        self.assertEqual(headers["x-first-death-reason"], "rejected")
        self.assertEqual(headers["x-first-death-queue"], q)
        self.assertEqual(headers["x-first-death-exchange"], "")
        self.assertEqual(headers["x-last-death-reason"], "rejected")
        self.assertEqual(headers["x-last-death-queue"], q)
        self.assertEqual(headers["x-last-death-exchange"], "")

    def test_nack_without_requeue_dead_letters(self):
        ch = self.channel()
        q, _, dlq = self.dlx_pair(ch)
        for i in range(3):
            ch.basic_publish("", q, b"n%d" % i)
        self.wait_for_count(ch, q, 3)
        last = None
        for _ in range(3):
            last, _, _ = ch.basic_get(q)
        ch.basic_nack(last.delivery_tag, multiple=True, requeue=False)
        self.wait_for_count(ch, dlq, 3)
        bodies = []
        for _ in range(3):
            _, props, body = ch.basic_get(dlq, auto_ack=True)
            self.assertEqual(props.headers["x-death"][0]["reason"], "rejected")
            bodies.append(body)
        self.assertEqual(bodies, [b"n0", b"n1", b"n2"])

    def test_requeued_rejection_is_not_dead_lettered(self):
        ch = self.channel()
        q, _, dlq = self.dlx_pair(ch)
        ch.basic_publish("", q, b"retry")
        method, _, _ = self.get_message(ch, q)
        ch.basic_reject(method.delivery_tag, requeue=True)
        self.wait_for_count(ch, q, 1)
        self.assertEqual(self.message_count(ch, dlq), 0)

    def test_dead_letter_routing_key_override(self):
        ch = self.channel()
        dlx = self.declare_exchange(ch, "direct", prefix="dlx")
        dlq = self.declare_queue(ch, prefix="dlq")
        ch.queue_bind(dlq, dlx, routing_key="dead")
        x = self.declare_exchange(ch, "topic")
        q = self.declare_queue(
            ch,
            arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"},
        )
        ch.queue_bind(q, x, routing_key="orders.*")
        ch.basic_publish(x, "orders.new", b"order")
        method, _, _ = self.get_message(ch, q)
        ch.basic_nack(method.delivery_tag, requeue=False)

        method, props, body = self.get_message(ch, dlq, auto_ack=True)
        self.assertEqual(body, b"order")
        self.assertEqual(method.routing_key, "dead")
        self.assertDeath(props.headers["x-death"][0], q, "rejected", x, ["orders.new"])
        self.assertEqual(props.headers["x-first-death-exchange"], x)

    def test_queue_ttl_expiry_dead_letters_as_expired(self):
        ch = self.channel()
        q, _, dlq = self.dlx_pair(ch, **{"x-message-ttl": 100})
        ch.basic_publish("", q, b"stale", pika.BasicProperties(headers={"n": 1}))
        method, props, body = self.get_message(ch, dlq, auto_ack=True, timeout=10)
        self.assertEqual(body, b"stale")
        self.assertEqual(props.headers["n"], 1)
        self.assertDeath(props.headers["x-death"][0], q, "expired", "", [q])
        self.assertNotIn("original-expiration", props.headers["x-death"][0])
        self.assertEqual(props.headers["x-first-death-reason"], "expired")
        self.assertEqual(self.message_count(ch, q), 0)

    def test_per_message_expiration_dead_letters_with_original_expiration(self):
        ch = self.channel()
        q, _, dlq = self.dlx_pair(ch)
        ch.basic_publish("", q, b"short-lived", pika.BasicProperties(expiration="150"))
        _, props, body = self.get_message(ch, dlq, auto_ack=True, timeout=10)
        self.assertEqual(body, b"short-lived")
        death = props.headers["x-death"][0]
        self.assertDeath(death, q, "expired", "", [q])
        self.assertEqual(death["original-expiration"], "150")
        # The TTL does not travel on with the dead-lettered copy.
        self.assertIsNone(props.expiration)

    def test_max_length_drop_head_dead_letters_as_maxlen(self):
        ch = self.channel()
        q, _, dlq = self.dlx_pair(ch, **{"x-max-length": 2})
        for i in range(5):
            ch.basic_publish("", q, b"L%d" % i)
        self.wait_for_count(ch, dlq, 3)
        self.assertEqual(self.message_count(ch, q), 2)
        dropped = []
        for _ in range(3):
            _, props, body = ch.basic_get(dlq, auto_ack=True)
            self.assertDeath(props.headers["x-death"][0], q, "maxlen", "", [q])
            dropped.append(body)
        self.assertEqual(dropped, [b"L0", b"L1", b"L2"])
        kept = [ch.basic_get(q, auto_ack=True)[2] for _ in range(2)]
        self.assertEqual(kept, [b"L3", b"L4"])

    def test_reject_publish_dlx_nacks_and_dead_letters(self):
        ch = self.channel()
        q, _, dlq = self.dlx_pair(ch, **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"})
        ch.confirm_delivery()
        ch.basic_publish("", q, b"fits")
        with self.assertRaises(pika.exceptions.NackError):
            ch.basic_publish("", q, b"overflow")
        _, props, body = self.get_message(ch, dlq, auto_ack=True)
        self.assertEqual(body, b"overflow")
        self.assertDeath(props.headers["x-death"][0], q, "maxlen", "", [q])
        self.assertEqual(ch.basic_get(q, auto_ack=True)[2], b"fits")

    def test_repeated_death_in_same_queue_increments_count(self):
        ch = self.channel()
        q, _, dlq = self.dlx_pair(ch)
        ch.basic_publish("", q, b"twice")
        method, _, _ = self.get_message(ch, q)
        ch.basic_reject(method.delivery_tag, requeue=False)
        _, props, body = self.get_message(ch, dlq, auto_ack=True)
        # A consumer of the DLQ sends it back for another try, headers and all.
        ch.basic_publish("", q, body, props)
        method, _, _ = self.get_message(ch, q)
        ch.basic_reject(method.delivery_tag, requeue=False)
        _, props, body = self.get_message(ch, dlq, auto_ack=True)
        deaths = props.headers["x-death"]
        self.assertEqual(len(deaths), 1)
        self.assertDeath(deaths[0], q, "rejected", "", [q], count=2)

    def test_death_in_two_queues_keeps_both_entries_newest_first(self):
        ch = self.channel()
        q2, _, dlq = self.dlx_pair(ch)
        # q1 expires its messages into q2 through its own DLX.
        dlx1 = self.declare_exchange(ch, "fanout", prefix="dlx1")
        ch.queue_bind(q2, dlx1)
        q1 = self.declare_queue(ch, arguments={"x-dead-letter-exchange": dlx1, "x-message-ttl": 50})
        ch.basic_publish("", q1, b"hop")
        method, _, _ = self.get_message(ch, q2, timeout=10)  # expired out of q1
        ch.basic_reject(method.delivery_tag, requeue=False)  # rejected out of q2
        _, props, _ = self.get_message(ch, dlq, auto_ack=True)
        deaths = props.headers["x-death"]
        self.assertEqual([(d["queue"], d["reason"]) for d in deaths], [(q2, "rejected"), (q1, "expired")])
        self.assertEqual(props.headers["x-first-death-queue"], q1)
        self.assertEqual(props.headers["x-first-death-reason"], "expired")
        self.assertEqual(props.headers["x-last-death-queue"], q2)
        self.assertEqual(props.headers["x-last-death-reason"], "rejected")

    def test_missing_dead_letter_exchange_drops_silently(self):
        ch = self.channel()
        q = self.declare_queue(ch, arguments={"x-dead-letter-exchange": "pika-no-such-dlx"})
        ch.basic_publish("", q, b"gone")
        method, _, _ = self.get_message(ch, q)
        ch.basic_reject(method.delivery_tag, requeue=False)
        self.wait_for_count(ch, q, 0)
        self.assertTrue(ch.is_open)


class TestTtl(BrokerTestCase):
    def test_queue_message_ttl_discards_without_dlx(self):
        ch = self.channel()
        q = self.declare_queue(ch, arguments={"x-message-ttl": 100})
        ch.basic_publish("", q, b"soon gone")
        time.sleep(0.15)
        self.wait_for_count(ch, q, 0)
        self.assertEqual(ch.basic_get(q), (None, None, None))

    def test_per_message_expiration(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="100"))
        ch.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
        time.sleep(0.15)
        self.wait_for_count(ch, q, 1)
        method, props, body = ch.basic_get(q, auto_ack=True)
        self.assertEqual(body, b"long")
        self.assertEqual(props.expiration, "60000")
        self.assertEqual(ch.basic_get(q), (None, None, None))

    def test_zero_ttl_message_is_delivered_only_to_a_waiting_consumer(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch)
        ch.basic_publish("", q, b"nobody waiting", pika.BasicProperties(expiration="0"))
        self.wait_for_count(ch, q, 0)
        self.assertEqual(ch.basic_get(q), (None, None, None))

    def test_shorter_of_queue_and_message_ttl_wins(self):
        ch = self.channel()
        q = self.declare_queue(ch, arguments={"x-message-ttl": 60000})
        ch.basic_publish("", q, b"msg ttl wins", pika.BasicProperties(expiration="100"))
        time.sleep(0.15)
        self.wait_for_count(ch, q, 0)

    def test_queue_expires_when_unused(self):
        ch = self.channel()
        q = self.declare_queue(ch, arguments={"x-expires": 300})
        # A passive declare renews the lease (RabbitMQ: "refreshed by queue.declare or
        # basic.get"), so probe once, well after the queue should have expired.
        time.sleep(1.5)
        probe = self.channel()
        with self.assertRaises(pika.exceptions.ChannelClosedByBroker) as cm:
            probe.queue_declare(q, passive=True)
        self.assertEqual(cm.exception.reply_code, 404)
        self.assertEqual(cm.exception.reply_text, "NOT_FOUND - no queue '%s' in vhost '/'" % q)


class TestLimits(BrokerTestCase):
    def test_max_length_bytes_drops_oldest(self):
        ch = self.channel()
        q = self.declare_queue(ch, arguments={"x-max-length-bytes": 10})
        for i in range(5):
            ch.basic_publish("", q, b"abcd%d" % i)  # 5 bytes each: two fit
        self.wait_for_count(ch, q, 2)
        self.assertEqual(
            [ch.basic_get(q, auto_ack=True)[2] for _ in range(2)], [b"abcd3", b"abcd4"]
        )

    def test_reject_publish_without_confirms_drops_silently(self):
        ch = self.channel()
        q = self.declare_queue(ch, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        ch.basic_publish("", q, b"first")
        ch.basic_publish("", q, b"second")
        self.wait_for_count(ch, q, 1)
        self.assertEqual(ch.basic_get(q, auto_ack=True)[2], b"first")


class TestPriorities(BrokerTestCase):
    def test_higher_priority_first(self):
        ch = self.channel()
        q = self.declare_queue(ch, arguments={"x-max-priority": 10})
        for body, prio in ((b"p1", 1), (b"p5", 5), (b"none", None), (b"p9", 9), (b"p5b", 5), (b"p0", 0)):
            ch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
        self.wait_for_count(ch, q, 6)
        order = [ch.basic_get(q, auto_ack=True)[2] for _ in range(6)]
        # Equal priorities stay FIFO; no priority counts as 0.
        self.assertEqual(order, [b"p9", b"p5", b"p5b", b"p1", b"none", b"p0"])

    def test_priority_above_max_counts_as_max(self):
        ch = self.channel()
        q = self.declare_queue(ch, arguments={"x-max-priority": 3})
        ch.basic_publish("", q, b"three", pika.BasicProperties(priority=3))
        ch.basic_publish("", q, b"two-hundred", pika.BasicProperties(priority=200))
        ch.basic_publish("", q, b"two", pika.BasicProperties(priority=2))
        self.wait_for_count(ch, q, 3)
        order = [ch.basic_get(q, auto_ack=True) for _ in range(3)]
        self.assertEqual([b for _, _, b in order], [b"three", b"two-hundred", b"two"])
        # The property itself is delivered unchanged.
        self.assertEqual(order[1][1].priority, 200)

    def test_consumer_receives_by_priority(self):
        conn = self.connect()
        ch = conn.channel()
        q = self.declare_queue(ch, arguments={"x-max-priority": 5})
        for prio in (1, 3, 5, 2, 4):
            ch.basic_publish("", q, b"%d" % prio, pika.BasicProperties(priority=prio))
        self.wait_for_count(ch, q, 5)
        got = []
        for method, _, body in ch.consume(q, inactivity_timeout=2):
            self.assertIsNotNone(method)
            got.append(body)
            ch.basic_ack(method.delivery_tag)
            if len(got) == 5:
                break
        ch.cancel()
        self.assertEqual(got, [b"5", b"4", b"3", b"2", b"1"])

    def test_queue_without_max_priority_is_fifo(self):
        ch = self.channel()
        q = self.declare_queue(ch)
        ch.basic_publish("", q, b"low", pika.BasicProperties(priority=1))
        ch.basic_publish("", q, b"high", pika.BasicProperties(priority=9))
        self.wait_for_count(ch, q, 2)
        self.assertEqual([ch.basic_get(q, auto_ack=True)[2] for _ in range(2)], [b"low", b"high"])


if __name__ == "__main__":
    unittest.main()
