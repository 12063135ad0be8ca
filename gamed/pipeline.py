"""Run the enabled middleware in order; isolate and time their failures.

A plugin that raises is logged and counted (``gamed_middleware_failures_total``)
and treated as having passed the message: a broken plugin must not take a
connection, or the reactor, down with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any, TypeVar

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

_F = TypeVar("_F", bound=Callable[..., Any])


def noop_hook(method: _F) -> _F:
    """Mark a plugin's ``before_process`` or ``after_process`` as doing nothing.

    The pipeline then does not call it at all (a plugin that only acts after a
    message need not be called before it). Only for a method that does nothing.
    """
    method.gamed_noop = True  # type: ignore[attr-defined]
    return method


def _is_noop(hook: Callable[..., Any]) -> bool:
    return bool(getattr(hook, "gamed_noop", False))


def _compile(pipeline: Pipeline) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``before`` and ``after`` for this configuration: one generated function each.

    Each calls the plugins' hooks in order, unrolled, with the timer's sampling
    (when a timer is installed) in the same call: the router's call is the only
    Python call on the way to the hooks. Each hook has a try of its own: free on
    Python 3.11+ while nothing raises (zero-cost exceptions); a hook that raises is
    counted and logged (``Pipeline._failed``) and the next one runs.

    ``before``: each hook may hand back a replacement message or a Veto (which ends
    the run); ``after``: each is called with the result.
    """
    timed = pipeline.timer is not None
    env: dict[str, Any] = {
        "p": pipeline,
        "Veto": Veto,
        "timer": pipeline.timer,
        "SAMPLE": TIMER_SAMPLE,
        "failed": pipeline._failed,
    }
    before = ["def before(ctx, message):"]
    if timed:
        before += [
            # Time one message in TIMER_SAMPLE: two clock reads and a histogram
            # update per plugin per message cost more than a cheap plugin does.
            # A countdown (no modulo): the same messages as counting up, every SAMPLE-th.
            "    left = p._left - 1",
            "    if not left:",
            "        p._left = SAMPLE",
            "        p._timing = True",
            "        return p._timed_before(timer, ctx, message)",
            "    p._left = left",
            "    p._timing = False",
        ]
    for i, (mw, hook) in enumerate(pipeline._befores):
        env[f"h{i}"], env[f"m{i}"] = hook, mw
        before += [
            "    try:",
            f"        o = h{i}(ctx, message)",
            "    except Exception:",
            f"        failed(m{i}, 'before')",
            "    else:",
            "        if o is not None:",
            "            if isinstance(o, Veto):",
        ]
        if timed:
            before.append(f"                timer.middleware_vetoed(m{i}.name)")
        before += [
            "                return o",
            "            message = o",
        ]
    before.append("    return message")
    after = ["def after(ctx, message, result):"]
    if timed:
        after += [
            "    if p._timing:",
            "        p._timed_after(timer, ctx, message, result)",
            "        return",
        ]
    for i, (plugin, after_hook) in enumerate(pipeline._afters):
        env[f"a{i}"], env[f"n{i}"] = after_hook, plugin
        after += [
            "    try:",
            f"        a{i}(ctx, message, result)",
            "    except Exception:",
            f"        failed(n{i}, 'after')",
        ]
    after.append("    return None")
    code = compile("\n".join(before + after), "<gamed pipeline>", "exec")
    exec(code, env)
    return env["before"], env["after"]


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
        self._timer: IPipelineObserver | None = None
        #: Messages until the next timed one (counts down to 0, then SAMPLE again).
        self._left = TIMER_SAMPLE
        self._timing = False
        self.failures: dict[tuple[str, str], int] = {}
        #: Called as on_failure(plugin_name, phase) -- the metrics hook.
        self.on_failure: Callable[[str, str], None] | None = None
        #: ``bool(pipeline)`` as a plain attribute, for the per-frame test.
        self.active = bool(self.middleware)
        # The hooks that do something (noop_hook-marked ones are left out), each with
        # its plugin (see _compile).
        self._befores = tuple(
            (mw, mw.before_process) for mw in self.middleware if not _is_noop(mw.before_process)
        )
        self._afters = tuple(
            (mw, mw.after_process) for mw in self.middleware if not _is_noop(mw.after_process)
        )
        #: ``before(ctx, message)``: the message to handle (maybe replaced), or a Veto.
        #: ``after(ctx, message, result)``: every plugin's after_process. Generated for
        #: this configuration (see _compile), again when a timer is installed.
        self.before: Callable[[IMessageContext, object], object]
        self.after: Callable[[IMessageContext, object, object], None]
        self.before, self.after = _compile(self)

    @property
    def timer(self) -> IPipelineObserver | None:
        """An IPipelineObserver: when set, one message in TIMER_SAMPLE has every plugin
        call timed, and every veto is counted."""
        return self._timer

    @timer.setter
    def timer(self, timer: IPipelineObserver | None) -> None:
        self._timer = timer
        self.before, self.after = _compile(self)

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

    def _timed_after(
        self, timer: IPipelineObserver, ctx: IMessageContext, message: object, result: object
    ) -> None:
        for mw, hook in self._afters:
            started = perf_counter()
            try:
                hook(ctx, message, result)
            except Exception:
                self._failed(mw, "after")
            timer.middleware_timed(mw.name, "after", perf_counter() - started)

    def _timed_before(
        self, timer: IPipelineObserver, ctx: IMessageContext, message: object
    ) -> object:
        for mw, hook in self._befores:
            started = perf_counter()
            try:
                outcome = hook(ctx, message)
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
