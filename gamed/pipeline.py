"""Run the enabled middleware in order; isolate and time their failures.

A plugin that raises is logged and counted (``gamed_middleware_failures_total``)
and treated as having passed the message: a broken plugin must not take a
connection, or the reactor, down with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter

from twisted.logger import Logger

from gamed.interfaces import (
    IConnectionObserver,
    IFrameObserver,
    IMessageContext,
    IMiddleware,
    IPipelineObserver,
)

_log = Logger()

#: With a timer installed, plugin calls are timed for one message in this many.
TIMER_SAMPLE = 16


@dataclass(slots=True, frozen=True)
class Veto:
    """Returned by ``before_process`` (or ``connection_opened``) to refuse."""

    code: int
    message: str
    close: bool = False  # also drop the connection after sending the error


class Pipeline:
    def __init__(self, middleware: Sequence[IMiddleware] = ()) -> None:
        for mw in middleware:
            if not IMiddleware.providedBy(mw):
                raise TypeError(f"{mw!r} does not provide IMiddleware")
        self.middleware: tuple[IMiddleware, ...] = tuple(middleware)
        self._observers = tuple(mw for mw in self.middleware if IConnectionObserver.providedBy(mw))
        self._frame_observers = tuple(mw for mw in self.middleware if IFrameObserver.providedBy(mw))
        #: An IPipelineObserver: when set, one message in TIMER_SAMPLE has every
        #: plugin call timed, and every veto is counted.
        self.timer: IPipelineObserver | None = None
        self._tick = 0
        self._timing = False
        self.failures: dict[tuple[str, str], int] = {}
        #: Called as on_failure(plugin_name, phase) -- the metrics hook.
        self.on_failure: Callable[[str, str], None] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(mw.name for mw in self.middleware)

    def __bool__(self) -> bool:
        return bool(self.middleware)

    def _failed(self, mw: IMiddleware, phase: str) -> None:
        key = (mw.name, phase)
        self.failures[key] = self.failures.get(key, 0) + 1
        _log.failure("middleware {name} failed in {phase}", name=mw.name, phase=phase)
        if self.on_failure is not None:
            self.on_failure(mw.name, phase)

    def before(self, ctx: IMessageContext, message: object) -> object:
        """The message to handle (maybe replaced), or a Veto."""
        timer = self.timer
        if timer is not None:
            # Time one message in TIMER_SAMPLE: two clock reads and a histogram
            # update per plugin per message cost more than a cheap plugin does.
            self._tick += 1
            self._timing = not self._tick % TIMER_SAMPLE
            if self._timing:
                return self._timed_before(timer, ctx, message)
        for mw in self.middleware:
            try:
                outcome = mw.before_process(ctx, message)
            except Exception:
                self._failed(mw, "before")
                continue
            if outcome is None:
                continue
            if isinstance(outcome, Veto):
                if timer is not None:
                    timer.middleware_vetoed(mw.name)
                return outcome
            message = outcome
        return message

    def after(self, ctx: IMessageContext, message: object, result: object) -> None:
        timer = self.timer if self._timing else None
        for mw in self.middleware:
            started = perf_counter() if timer is not None else 0.0
            try:
                mw.after_process(ctx, message, result)
            except Exception:
                self._failed(mw, "after")
            if timer is not None:
                timer.middleware_timed(mw.name, "after", perf_counter() - started)

    def _timed_before(
        self, timer: IPipelineObserver, ctx: IMessageContext, message: object
    ) -> object:
        for mw in self.middleware:
            started = perf_counter()
            try:
                outcome = mw.before_process(ctx, message)
            except Exception:
                self._failed(mw, "before")
                outcome = None
            timer.middleware_timed(mw.name, "before", perf_counter() - started)
            if outcome is None:
                continue
            if isinstance(outcome, Veto):
                timer.middleware_vetoed(mw.name)
                return outcome
            message = outcome
        return message

    def frame_refused(self, ctx: IMessageContext, reason: str, size: int) -> None:
        for mw in self._frame_observers:
            try:
                IFrameObserver(mw).frame_refused(ctx, reason, size)
            except Exception:
                self._failed(mw, "frame_refused")

    def connection_opened(self, ctx: IMessageContext) -> Veto | None:
        for i, mw in enumerate(self._observers):
            try:
                outcome = IConnectionObserver(mw).connection_opened(ctx)
            except Exception:
                self._failed(mw, "connection_opened")
                continue
            if isinstance(outcome, Veto):
                # The plugins before this one counted the connection: close it for them.
                for earlier in self._observers[:i]:
                    try:
                        IConnectionObserver(earlier).connection_closed(ctx, "refused")
                    except Exception:
                        self._failed(earlier, "connection_closed")
                return outcome
        return None

    def connection_closed(self, ctx: IMessageContext, reason: str) -> None:
        for mw in self._observers:
            try:
                IConnectionObserver(mw).connection_closed(ctx, reason)
            except Exception:
                self._failed(mw, "connection_closed")
