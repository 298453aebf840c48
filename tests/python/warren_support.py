"""Shared helpers for the pika test suite.

The broker under test is reached on 127.0.0.1:$WARREN_TEST_PORT as guest/guest, vhost "/".
tests/tests/pika_suite.rs starts a warren-server and sets the variable; to run the suite by
hand against a broker you started yourself:

    WARREN_TEST_PORT=5672 python3 -m unittest discover -s tests/python -p 'test_*.py' -v
"""

import os
import signal
import time
import unittest
import uuid

try:
    import pika
    import pika.exceptions  # noqa: F401  (makes pika.exceptions.* available to the tests)
except ImportError as e:  # pragma: no cover - the Rust driver checks this before running us
    raise ImportError(
        "the Warren pika suite needs the pika client library: run `pip install pika`"
    ) from e

HOST = "127.0.0.1"

_PORT = os.environ.get("WARREN_TEST_PORT", "").strip()
if not _PORT.isdigit():
    raise RuntimeError(
        "WARREN_TEST_PORT is not set (or not a port number): it must be the AMQP port of a "
        "running Warren broker (guest/guest, vhost '/'). "
        "`cargo test -p warren-tests --test pika_suite` sets it for you."
    )
PORT = int(_PORT)

# No single test may take longer than this many seconds: a broker that never answers a
# synchronous method would otherwise hang pika (and the suite) forever.
TEST_TIMEOUT = int(os.environ.get("WARREN_TEST_TIMEOUT", "60"))


def params(username="guest", password="guest", virtual_host="/", **kw):
    kw.setdefault("connection_attempts", 1)
    kw.setdefault("socket_timeout", 10)
    kw.setdefault("blocked_connection_timeout", 30)
    return pika.ConnectionParameters(
        host=HOST,
        port=PORT,
        virtual_host=virtual_host,
        credentials=pika.PlainCredentials(username, password),
        **kw,
    )


def unique(prefix):
    """A name no other test (or earlier run) uses."""
    return "pika-%s-%s" % (prefix, uuid.uuid4().hex)


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout("test did not finish within %d s (broker not answering?)" % TEST_TIMEOUT)


class BrokerTestCase(unittest.TestCase):
    """A TestCase with connection helpers that clean up after themselves.

    Every queue/exchange made through `declare_queue` / `declare_exchange` is deleted at the
    end of the test on a fresh connection, so a test that leaves its own channel closed by an
    error still cleans up.
    """

    maxDiff = None

    def setUp(self):
        super().setUp()
        self._queues = []
        self._exchanges = []
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(TEST_TIMEOUT)
        self.addCleanup(signal.alarm, 0)
        # Registered first, so it runs last (cleanups are LIFO).
        self.addCleanup(self._delete_declared)

    # ----------------------------------------------------------------- connections

    def connect(self, **kw):
        conn = pika.BlockingConnection(params(**kw))
        self.addCleanup(self._close_quietly, conn)
        return conn

    def channel(self, conn=None):
        return (conn or self.connect()).channel()

    @staticmethod
    def _close_quietly(conn):
        try:
            if conn.is_open:
                conn.close()
        except Exception:  # noqa: BLE001 - cleanup must not mask the test's own result
            pass

    # ----------------------------------------------------------------- resources

    def declare_queue(self, ch, prefix="q", **kw):
        """Declares a uniquely named queue on `ch` and schedules its deletion."""
        name = unique(prefix)
        ch.queue_declare(name, **kw)
        self._queues.append(name)
        return name

    def declare_exchange(self, ch, exchange_type="direct", prefix="x", **kw):
        name = unique(prefix)
        ch.exchange_declare(name, exchange_type=exchange_type, **kw)
        self._exchanges.append(name)
        return name

    def forget_queue(self, name):
        """Schedules deletion of a queue the test declared some other way."""
        self._queues.append(name)

    def forget_exchange(self, name):
        self._exchanges.append(name)

    def _delete_declared(self):
        if not self._queues and not self._exchanges:
            return
        conn = pika.BlockingConnection(params())
        try:
            ch = conn.channel()
            for q in self._queues:
                ch.queue_delete(q)
            for x in self._exchanges:
                ch.exchange_delete(x)
        finally:
            self._close_quietly(conn)

    # ----------------------------------------------------------------- assertions

    def assertChannelClosed(self, code, text=None, text_prefix=None):
        """Context manager: the body must raise ChannelClosedByBroker(code, text)."""
        return _ExpectClose(self, pika.exceptions.ChannelClosedByBroker, code, text, text_prefix)

    def assertConnectionClosed(self, code, text=None, text_prefix=None):
        return _ExpectClose(
            self, pika.exceptions.ConnectionClosedByBroker, code, text, text_prefix
        )

    def get_message(self, ch, queue, auto_ack=False, timeout=5.0):
        """basic_get until a message arrives (delivery into a queue is asynchronous)."""
        deadline = time.monotonic() + timeout
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
            if method is not None:
                return method, props, body
            if time.monotonic() > deadline:
                self.fail("no message arrived in %r within %.1f s" % (queue, timeout))
            time.sleep(0.02)

    def pump_until(self, conn, condition, timeout=5.0, what="condition"):
        """Processes pika I/O (deliveries, returns, cancels) until `condition()` holds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail("timed out after %.1f s waiting for %s" % (timeout, what))
            conn.process_data_events(time_limit=0.05)

    def message_count(self, ch, queue):
        return ch.queue_declare(queue, passive=True).method.message_count

    def wait_for_count(self, ch, queue, expected, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            n = self.message_count(ch, queue)
            if n == expected or time.monotonic() > deadline:
                self.assertEqual(n, expected, "message count of %r" % queue)
                return
            time.sleep(0.02)


class _ExpectClose:
    def __init__(self, case, exc_type, code, text, text_prefix):
        self.case = case
        self.exc_type = exc_type
        self.code = code
        self.text = text
        self.text_prefix = text_prefix
        self.exception = None

    def __enter__(self):
        return self

    def __exit__(self, etype, value, tb):
        if etype is None:
            self.case.fail("expected %s(%d) but nothing was raised" % (self.exc_type.__name__, self.code))
        if not issubclass(etype, self.exc_type):
            return False  # propagate the unexpected exception as it is
        self.exception = value
        self.case.assertEqual(value.reply_code, self.code, value.reply_text)
        if self.text is not None:
            self.case.assertEqual(value.reply_text, self.text)
        if self.text_prefix is not None:
            self.case.assertTrue(
                value.reply_text.startswith(self.text_prefix),
                "%r does not start with %r" % (value.reply_text, self.text_prefix),
            )
        return True
