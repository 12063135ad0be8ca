"""Run the enabled middleware in order; isolate and time their failures.

A plugin that raises is logged and counted (``gamed_middleware_failures_total``)
and treated as having passed the message: a broken plugin must not take a
connection, or the reactor, down with it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from types import TracebackType
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


#: Lines of generated code per hook in a fused call (the first hook's call is on line 2).
_LINES_PER_HOOK = {"before": 5, "after": 1}


def _compile(phase: str, hooks: Sequence[Callable[..., Any]]) -> Callable[..., Any]:
    """One function that calls every hook in order, unrolled.

    ``before``: each hook may hand back a replacement message or a Veto (which ends
    the run); ``after``: each is called with the result. No try/except per hook: the
    caller puts one around the whole call and, when a hook raised, finds which one
    from the traceback's line (each call is on a line of its own) and goes on with
    the next hook (``Pipeline._isolate_before``/``_isolate_after``).
    """
    env: dict[str, Any] = {"Veto": Veto}
    if phase == "before":
        lines = ["def fused(ctx, message):"]
        for i, hook in enumerate(hooks):
            env[f"h{i}"] = hook
            lines += [
                f"    o = h{i}(ctx, message)",
                "    if o is not None:",
                "        if isinstance(o, Veto):",
                f"            return o, {i}",
                "        message = o",
            ]
        lines.append("    return message, -1")
    else:
        lines = ["def fused(ctx, message, result):"]
        for i, hook in enumerate(hooks):
            env[f"h{i}"] = hook
            lines.append(f"    h{i}(ctx, message, result)")
        lines.append("    return None")
    code = compile("\n".join(lines), f"<gamed pipeline {phase}>", "exec")
    exec(code, env)
    fused: Callable[..., Any] = env["fused"]
    return fused


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
        #: ``bool(pipeline)`` as a plain attribute, for the per-frame test.
        self.active = bool(self.middleware)
        # The hooks that do something (noop_hook-marked ones are left out), each with
        # its plugin, and the fused call of each phase (see _compile).
        self._befores = tuple(
            (mw, mw.before_process) for mw in self.middleware if not _is_noop(mw.before_process)
        )
        self._afters = tuple(
            (mw, mw.after_process) for mw in self.middleware if not _is_noop(mw.after_process)
        )
        self._fused_before = _compile("before", [h for _, h in self._befores])
        self._fused_after = _compile("after", [h for _, h in self._afters])

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
        try:
            outcome, vetoed_by = self._fused_before(ctx, message)
        except Exception:
            outcome, vetoed_by = self._isolate_before(ctx, message, sys.exc_info()[2])
        if vetoed_by >= 0 and timer is not None:
            timer.middleware_vetoed(self._befores[vetoed_by][0].name)
        return outcome

    def _failed_at(self, tb: TracebackType | None) -> tuple[int, dict[str, Any]]:
        """The index of the hook that raised in a fused call, and that call's locals."""
        while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<gamed pipeline"):
            tb = tb.tb_next
        assert tb is not None, "an exception from outside the fused call"
        phase = tb.tb_frame.f_code.co_filename.removeprefix("<gamed pipeline ").rstrip(">")
        return (tb.tb_lineno - 2) // _LINES_PER_HOOK[phase], tb.tb_frame.f_locals

    def _isolate_before(
        self, ctx: IMessageContext, message: object, tb: TracebackType | None
    ) -> tuple[object, int]:
        """A hook raised in the fused call: count it, then run the rest one by one."""
        failed, local = self._failed_at(tb)
        message = local.get("message", message)
        self._failed(self._befores[failed][0], "before")
        for i in range(failed + 1, len(self._befores)):
            mw, hook = self._befores[i]
            try:
                outcome = hook(ctx, message)
            except Exception:
                self._failed(mw, "before")
                continue
            if outcome is None:
                continue
            if isinstance(outcome, Veto):
                return outcome, i
            message = outcome
        return message, -1

    def after(self, ctx: IMessageContext, message: object, result: object) -> None:
        if self._timing and self.timer is not None:
            self._timed_after(self.timer, ctx, message, result)
            return
        try:
            self._fused_after(ctx, message, result)
        except Exception:
            failed, _ = self._failed_at(sys.exc_info()[2])
            self._failed(self._afters[failed][0], "after")
            for mw, hook in self._afters[failed + 1 :]:
                try:
                    hook(ctx, message, result)
                except Exception:
                    self._failed(mw, "after")

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
