"""Celery tasks used by stalk's integration tests and by the docker-compose worker.

The broker comes from STALK_BROKER_URL or CELERY_BROKER_URL. Results use the
rpc:// backend, which publishes every state to the task's reply_to queue.
"""
import os
import time

from celery import Celery

broker = os.environ.get("STALK_BROKER_URL") or os.environ.get(
    "CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
app = Celery("tasks", broker=broker, backend="rpc://")
app.conf.task_track_started = True
app.conf.accept_content = ["json"]
app.conf.result_persistent = os.environ.get("STALK_RESULT_PERSISTENT", "") == "1"
app.conf.worker_prefetch_multiplier = int(os.environ.get("STALK_PREFETCH", "4"))
app.conf.broker_connection_retry_on_startup = True
if os.environ.get("STALK_SENT_EVENTS") == "1":
    app.conf.task_send_sent_event = True
# A fleet on quorum queues (Celery 5.5+): the queues given with -Q that
# are not declared yet are created with this type and exchange type.
if os.environ.get("STALK_MISSING_QUEUE_TYPE"):
    app.conf.task_create_missing_queue_type = os.environ["STALK_MISSING_QUEUE_TYPE"]
if os.environ.get("STALK_MISSING_EXCHANGE_TYPE"):
    app.conf.task_create_missing_queue_exchange_type = os.environ["STALK_MISSING_EXCHANGE_TYPE"]


class CustomError(Exception):
    """An exception defined by the application, not by Python."""


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def tsum(xs):
    return sum(xs)


@app.task
def slow(s):
    time.sleep(s)
    return s


@app.task
def boom(msg):
    raise ValueError(msg)


@app.task
def custom_fail(code, detail):
    raise CustomError(code, detail)


@app.task(bind=True)
def progress(self, n, delay=0.05):
    for i in range(n):
        self.update_state(state="PROGRESS", meta={"current": i, "total": n})
        time.sleep(delay)
    return n


@app.task(bind=True, max_retries=5, default_retry_delay=0.1)
def flaky(self, times=2):
    if self.request.retries < times:
        raise self.retry(exc=RuntimeError("try again"))
    return "ok after %d" % self.request.retries


@app.task(bind=True)
def spawn(self, n):
    # Subtasks go to the queue this task came from, so that the same worker
    # runs them instead of leaving them in the default queue. Their results
    # go to this worker's own reply queue, as Celery does for any subtask.
    queue = (self.request.delivery_info or {}).get("routing_key") or "celery"
    return [add.apply_async((i, i), queue=queue).id for i in range(n)]


@app.task(ignore_result=True)
def quiet():
    return 1


@app.task
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task
def big():
    return {"big": 2 ** 70, "neg": -(2 ** 64) - 1, "exact": 9007199254740993, "float": 0.1}


@app.task(acks_late=True, reject_on_worker_lost=True)
def slow_late(s):
    time.sleep(s)
    return s


@app.task(bind=True)
def whoami(self):
    return {"hostname": self.request.hostname, "retries": self.request.retries,
            "reply_to": self.request.reply_to}


@app.task
def touch(path, text):
    """Writes text to path: a side effect a test can see without a result."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return text


@app.task(bind=True)
def request_info(self, *names, **_ignored):
    """Returns what the worker made of the message: the named request
    attributes (custom headers become attributes) and the delivery info.
    Keyword arguments are accepted and ignored (they show in kwargsrepr)."""
    info = {n: getattr(self.request, n, None) for n in names}
    info["delivery_info"] = {k: self.request.delivery_info.get(k)
                             for k in ("exchange", "routing_key")}
    return info


@app.task
def types(*args, **kwargs):
    """The Python type of every argument, as the worker decoded the body."""
    return {"args": [type(a).__name__ for a in args],
            "kwargs": {k: type(v).__name__ for k, v in kwargs.items()}}


@app.task(bind=True)
def traceinfo(self, *args):
    """The W3C trace context the message carried, where OpenTelemetry's
    Celery instrumentation reads it (top-level headers become request
    attributes); args are ignored, so that the task can be a chain step."""
    return {"traceparent": getattr(self.request, "traceparent", None),
            "tracestate": getattr(self.request, "tracestate", None)}
