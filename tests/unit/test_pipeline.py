"""gamed.pipeline.Pipeline (middleware order, vetoes, isolation) and gamed.events.EventBus."""

from __future__ import annotations

import pytest
from twisted.logger import globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gamed import events as ev
from gamed.events import EventBus
from gamed.interfaces import IConnectionObserver, IEventSink, IMiddleware
from gamed.pipeline import Pipeline, Veto
from tests.unit.fakes import Ctx


@implementer(IMiddleware)
class Recorder:
    """Records every call into a shared log; ``before``/``after`` set what it does."""

    def __init__(self, name: str, log: list, before=None, after=None) -> None:
        self.name = name
        self.log = log
        self._before = before
        self._after = after

    def before_process(self, ctx, message):
        self.log.append((self.name, "before", message))
        if callable(self._before):
            return self._before(message)
        return self._before

    def after_process(self, ctx, message, result):
        self.log.append((self.name, "after", message, result))
        if self._after is not None:
            self._after()


@implementer(IMiddleware, IConnectionObserver)
class Observer(Recorder):
    def __init__(self, name: str, log: list, opened=None, fail_closed: bool = False) -> None:
        super().__init__(name, log)
        self._opened = opened
        self._fail_closed = fail_closed

    def connection_opened(self, ctx):
        self.log.append((self.name, "opened"))
        if isinstance(self._opened, Exception):
            raise self._opened
        return self._opened

    def connection_closed(self, ctx, reason):
        self.log.append((self.name, "closed", reason))
        if self._fail_closed:
            raise RuntimeError("observer broke")


def boom(*_args):
    raise RuntimeError("plugin bug")


CTX = Ctx(user_id=7)


@pytest.fixture
def caplog_twisted():
    """Twisted log events emitted during the test."""
    captured: list = []
    globalLogPublisher.addObserver(captured.append)
    yield captured
    globalLogPublisher.removeObserver(captured.append)


# -- Pipeline ---------------------------------------------------------------------------


def test_empty_pipeline_passes_messages_through() -> None:
    p = Pipeline()
    assert not p
    assert p.names == ()
    msg = object()
    assert p.before(CTX, msg) is msg
    p.after(CTX, msg, None)
    assert p.connection_opened(CTX) is None
    p.connection_closed(CTX, "closed")
    assert p.failures == {}


def test_calls_run_in_order() -> None:
    log: list = []
    p = Pipeline([Recorder("a", log), Recorder("b", log), Recorder("c", log)])
    assert p
    assert p.names == ("a", "b", "c")
    msg = "m"
    assert p.before(CTX, msg) == "m"
    p.after(CTX, msg, None)
    assert log == [
        ("a", "before", "m"),
        ("b", "before", "m"),
        ("c", "before", "m"),
        ("a", "after", "m", None),
        ("b", "after", "m", None),
        ("c", "after", "m", None),
    ]


def test_veto_stops_later_plugins() -> None:
    log: list = []
    veto = Veto(429, "slow down")
    p = Pipeline([Recorder("a", log), Recorder("b", log, before=veto), Recorder("c", log)])
    assert p.before(CTX, "m") is veto
    assert [entry[0] for entry in log] == ["a", "b"]


def test_veto_defaults() -> None:
    v = Veto(403, "no")
    assert (v.code, v.message, v.close) == (403, "no", False)
    assert Veto(401, "bad token", close=True).close is True
    with pytest.raises(AttributeError):
        v.code = 500  # type: ignore[misc]


def test_replacement_message_is_seen_by_later_plugins() -> None:
    log: list = []
    p = Pipeline(
        [
            Recorder("a", log, before=lambda m: m + "!"),
            Recorder("b", log),  # None: keeps the replaced message
            Recorder("c", log, before=lambda m: m.upper()),
            Recorder("d", log),
        ]
    )
    assert p.before(CTX, "hi") == "HI!"
    assert log == [
        ("a", "before", "hi"),
        ("b", "before", "hi!"),
        ("c", "before", "hi!"),
        ("d", "before", "HI!"),
    ]


def test_failure_in_before_is_counted_and_the_rest_still_run() -> None:
    log: list = []
    hooks: list = []
    p = Pipeline([Recorder("a", log), Recorder("bad", log, before=boom), Recorder("c", log)])
    p.on_failure = lambda name, phase: hooks.append((name, phase))
    assert p.before(CTX, "m") == "m"  # treated as having passed the message
    assert [entry[0] for entry in log] == ["a", "bad", "c"]
    assert log[-1] == ("c", "before", "m")
    assert p.failures == {("bad", "before"): 1}
    assert hooks == [("bad", "before")]
    p.before(CTX, "m")
    assert p.failures == {("bad", "before"): 2}
    assert hooks == [("bad", "before")] * 2


def test_failure_in_after_is_counted_and_the_rest_still_run() -> None:
    log: list = []
    hooks: list = []
    p = Pipeline([Recorder("bad", log, after=boom), Recorder("b", log)])
    p.on_failure = lambda name, phase: hooks.append((name, phase))
    p.after(CTX, "m", "result")
    assert log == [("bad", "after", "m", "result"), ("b", "after", "m", "result")]
    assert p.failures == {("bad", "after"): 1}
    assert hooks == [("bad", "after")]


def test_fused_call_isolates_a_failure_between_a_replacement_and_a_veto() -> None:
    """The fused fast path: after a hook raises, the next ones run with the message as
    replaced so far, and a later veto still ends the run (with the right plugin named)."""
    log: list = []
    vetoes: list = []

    class Timer:
        def middleware_timed(self, name: str, phase: str, seconds: float) -> None:
            pass

        def middleware_vetoed(self, name: str) -> None:
            vetoes.append(name)

    p = Pipeline(
        [
            Recorder("a", log, before=lambda m: m + "!"),
            Recorder("bad", log, before=boom, after=boom),
            Recorder("c", log, before=lambda m: Veto(403, m) if m == "no!" else None),
            Recorder("d", log, after=boom),
            Recorder("e", log),
        ]
    )
    p.timer = Timer()
    assert p.before(CTX, "hi") == "hi!"
    assert [e[:3] for e in log] == [
        ("a", "before", "hi"),
        ("bad", "before", "hi!"),
        ("c", "before", "hi!"),
        ("d", "before", "hi!"),
        ("e", "before", "hi!"),
    ]
    assert p.before(CTX, "no") == Veto(403, "no!")
    assert vetoes == ["c"]
    log.clear()
    p.after(CTX, "m", None)
    assert [e[0] for e in log] == ["a", "bad", "c", "d", "e"]
    assert p.failures == {("bad", "before"): 2, ("bad", "after"): 1, ("d", "after"): 1}


def test_a_noop_hook_is_not_called() -> None:
    from gamed.pipeline import noop_hook

    calls: list = []

    @implementer(IMiddleware)
    class AfterOnly:
        name = "after-only"

        @noop_hook
        def before_process(self, ctx, message):
            calls.append("before")  # pragma: no cover - never called

        def after_process(self, ctx, message, result):
            calls.append("after")

    p = Pipeline([AfterOnly()])
    assert p.before(CTX, "m") == "m"
    p.after(CTX, "m", None)
    assert calls == ["after"]


def test_failure_without_on_failure_hook_is_still_counted() -> None:
    p = Pipeline([Recorder("bad", [], before=boom)])
    assert p.on_failure is None
    assert p.before(CTX, "m") == "m"
    assert p.failures == {("bad", "before"): 1}


def test_failures_are_logged(caplog_twisted: list) -> None:
    p = Pipeline([Recorder("bad", [], before=boom)])
    p.before(CTX, "m")
    failures = [e for e in caplog_twisted if e.get("log_failure") is not None]
    assert len(failures) == 1
    assert failures[0]["name"] == "bad"
    assert failures[0]["phase"] == "before"
    assert failures[0]["log_failure"].check(RuntimeError)


@pytest.mark.parametrize("thing", [object(), "plugin", lambda ctx, m: None])
def test_non_middleware_is_rejected(thing: object) -> None:
    with pytest.raises(TypeError, match="does not provide IMiddleware"):
        Pipeline([Recorder("ok", []), thing])  # type: ignore[list-item]


def test_connection_observers_only() -> None:
    log: list = []
    plain = Recorder("plain", log)
    obs = Observer("obs", log)
    p = Pipeline([plain, obs])
    assert p.connection_opened(CTX) is None
    p.connection_closed(CTX, "idle")
    assert log == [("obs", "opened"), ("obs", "closed", "idle")]


def test_connection_opened_veto_stops_later_observers() -> None:
    log: list = []
    veto = Veto(403, "blocked", close=True)
    p = Pipeline([Observer("a", log), Observer("b", log, opened=veto), Observer("c", log)])
    assert p.connection_opened(CTX) is veto
    # "a" had counted the connection, so it is told it closed; "c" never saw it.
    assert log == [("a", "opened"), ("b", "opened"), ("a", "closed", "refused")]


def test_connection_opened_non_veto_results_are_ignored() -> None:
    log: list = []
    p = Pipeline([Observer("a", log, opened="whatever"), Observer("b", log)])
    assert p.connection_opened(CTX) is None
    assert log == [("a", "opened"), ("b", "opened")]


def test_observer_failures_are_isolated() -> None:
    log: list = []
    hooks: list = []
    p = Pipeline(
        [
            Observer("bad", log, opened=RuntimeError("x"), fail_closed=True),
            Observer("good", log),
        ]
    )
    p.on_failure = lambda name, phase: hooks.append((name, phase))
    assert p.connection_opened(CTX) is None
    p.connection_closed(CTX, "closed")
    assert log == [
        ("bad", "opened"),
        ("good", "opened"),
        ("bad", "closed", "closed"),
        ("good", "closed", "closed"),
    ]
    assert p.failures == {("bad", "connection_opened"): 1, ("bad", "connection_closed"): 1}
    assert hooks == [("bad", "connection_opened"), ("bad", "connection_closed")]


# -- EventBus ---------------------------------------------------------------------------


def test_event_bus_is_an_event_sink() -> None:
    assert verifyObject(IEventSink, EventBus())


def test_subscribe_and_unsubscribe() -> None:
    bus = EventBus()
    assert not bus.active
    got_a: list = []
    got_b: list = []
    unsubscribe_a = bus.subscribe(got_a.append)
    bus.subscribe(got_b.append)
    assert bus.active
    e1 = ev.RoomCreated(1, 2, 3.0)
    bus.emit(e1)
    unsubscribe_a()
    e2 = ev.RoomDeleted(1, 4.0)
    bus.emit(e2)
    assert got_a == [e1]
    assert got_b == [e1, e2]


def test_emit_without_subscribers() -> None:
    bus = EventBus()
    bus.emit(ev.RoomDeleted(1, 0.0))
    assert bus.subscriber_errors == 0


def test_subscribers_receive_in_subscription_order() -> None:
    bus = EventBus()
    order: list = []
    bus.subscribe(lambda e: order.append(("first", e)))
    bus.subscribe(lambda e: order.append(("second", e)))
    bus.emit("x")
    assert order == [("first", "x"), ("second", "x")]


def test_raising_subscriber_is_counted_and_others_still_receive(caplog_twisted: list) -> None:
    bus = EventBus()
    before: list = []
    after: list = []
    bus.subscribe(before.append)
    bus.subscribe(boom)
    bus.subscribe(after.append)
    bus.emit("e1")
    bus.emit("e2")
    assert before == ["e1", "e2"]
    assert after == ["e1", "e2"]
    assert bus.subscriber_errors == 2
    assert sum(1 for e in caplog_twisted if e.get("log_failure") is not None) == 2


def test_events_are_frozen_values() -> None:
    e = ev.RoomJoined(room_id=5, user_id=1, user_count=2, at=1.0)
    assert e == ev.RoomJoined(5, 1, 2, 1.0)
    with pytest.raises(AttributeError):
        e.user_id = 2  # type: ignore[misc]


def test_unsubscribing_during_emit_does_not_skip_others() -> None:
    bus = EventBus()
    got: list = []
    unsubscribe = None

    def once(event: object) -> None:
        unsubscribe()

    unsubscribe = bus.subscribe(once)
    bus.subscribe(got.append)
    bus.emit("e1")
    assert got == ["e1"]


def test_a_veto_at_accept_closes_the_connection_for_plugins_that_counted_it() -> None:
    from zope.interface import implementer

    from gamed.interfaces import IConnectionObserver, IMiddleware
    from gamed.pipeline import Pipeline, Veto

    @implementer(IMiddleware, IConnectionObserver)
    class Obs:
        def __init__(self, name: str, veto: bool) -> None:
            self.name, self.veto, self.seen = name, veto, []

        def before_process(self, ctx, message):
            return None

        def after_process(self, ctx, message, result):
            pass

        def connection_opened(self, ctx):
            self.seen.append("opened")
            return Veto(403, "no") if self.veto else None

        def connection_closed(self, ctx, reason):
            self.seen.append(reason)

    first, second, third = Obs("a", False), Obs("b", True), Obs("c", False)
    assert Pipeline([first, second, third]).connection_opened(object()) == Veto(403, "no")
    assert first.seen == ["opened", "refused"]
    assert second.seen == ["opened"]
    assert third.seen == []


def test_timer_samples_one_message_in_n_but_counts_every_veto() -> None:
    from zope.interface import implementer

    from gamed.interfaces import IMiddleware
    from gamed.pipeline import TIMER_SAMPLE, Pipeline, Veto

    @implementer(IMiddleware)
    class Refuser:
        name = "refuser"

        def before_process(self, ctx, message):
            return Veto(429, "no")

        def after_process(self, ctx, message, result):
            pass

    class Timer:
        def __init__(self) -> None:
            self.timed: list = []
            self.vetoes = 0

        def middleware_timed(self, name, phase, seconds):
            self.timed.append((name, phase))

        def middleware_vetoed(self, name):
            self.vetoes += 1

    p = Pipeline([Refuser()])
    timer = Timer()
    p.timer = timer
    for _ in range(TIMER_SAMPLE * 3):
        p.after(None, "m", p.before(None, "m"))
    assert timer.vetoes == TIMER_SAMPLE * 3
    assert timer.timed.count(("refuser", "before")) == 3
    assert timer.timed.count(("refuser", "after")) == 3
