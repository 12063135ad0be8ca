"""``/admin/`` on the side HTTP port: security stats and sanctions, behind a bearer token.

Every call needs ``Authorization: Bearer <token>`` matching ``--admin-token-file``
(compared in constant time). No token file configured: 403 for everything; a
missing or wrong token: 401. JSON in, JSON out; bad ids and addresses are 400,
unknown paths 404, wrong methods 405.

A ban, block or unblock is enforced in memory at once, and answered only once
it is durable: 200 with ``"durable": true`` after the write committed, or 202
with ``"durable": false, "pending": true, "why": ...`` when the write failed
(read-only data dir, disk full) or has not finished within ``ACK_WAIT``
seconds. A pending change is kept and retried until it is written.

With ``--redis`` (the plugin's ``sync``) these four changes are cluster-wide:
each is first written to Redis (which tells every node), and applied and
written here only once Redis stored it; Redis unreachable is 503 with nothing
changed anywhere (docs/security.md, "In a cluster").
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson
from twisted.internet import defer
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gamed.config import ConfigError
from gamed.errors import SharedStateUnavailable
from gamed.httputil import bearer_refusal, json_response, path_id
from gamed.middleware.security.policy import normalize_ip

if TYPE_CHECKING:
    from gamed.middleware.security.middleware import SecurityMiddleware

_log = Logger()

#: An answer: (status, body), or a Deferred of one (a change written to Redis first).
_Answer: TypeAlias = "tuple[int, Any] | defer.Deferred[tuple[int, Any]]"
#: An admin action on one user or IP: its answer, or None for an action that does not exist.
_Action = Callable[[Request, Any, bytes], "_Answer | None"]

_MAX_U32 = 2**32 - 1
_MAX_BODY = 4096
_MAX_DURATION = 10 * 365 * 86400.0
#: Seconds an admin change waits for its write before it is answered 202 (pending).
ACK_WAIT = 2.0


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, allow: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


def _user_id(text: bytes) -> int:
    uid = path_id(text, 0, _MAX_U32)
    if uid is None:
        s = text[:40].decode("ascii", "replace")
        raise _HTTPError(400, f"bad user id {s!r}: expected an integer 0..{_MAX_U32}")
    return uid


def _ip(text: bytes) -> str:
    s = text.decode("utf-8", "replace")
    try:
        ipaddress.ip_address(s)
    except ValueError:
        raise _HTTPError(400, f"bad IP address {s!r}") from None
    return normalize_ip(s)[0]


def _body(request: Request) -> dict[str, Any]:
    raw = request.content.read(_MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > _MAX_BODY:
        raise _HTTPError(413, f"request body over {_MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise _HTTPError(400, f"body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise _HTTPError(400, "body must be a JSON object")
    return body


def _reason(body: dict[str, Any], default: str) -> str:
    reason = body.get("reason", default)
    if not isinstance(reason, str) or not 0 < len(reason) <= 200:
        raise _HTTPError(400, "reason must be a string of 1..200 characters")
    return reason


class AdminResource(Resource):
    isLeaf = True

    def __init__(
        self, mw: SecurityMiddleware, admin_token: Callable[[], bytes | None], control: Any
    ) -> None:
        super().__init__()
        self.mw = mw
        self._token = admin_token
        self.control = control

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        try:
            self._authorize(request)
            seq = self.mw.store.seq
            answer = self._route(request, method)
            if isinstance(answer, defer.Deferred):
                return self._when_shared(request, method, answer, seq)
            status, body = answer
            if status == 200 and self.mw.store.seq != seq:
                return self._when_durable(request, method, body, self.mw.store.seq)
        except Exception as e:
            return self._refused(request, method, e)
        self._audit(request, method, status, "")
        return json_response(request, status, body)

    def _refused(self, request: Request, method: str, e: Exception) -> bytes:
        if isinstance(e, _HTTPError):
            if e.allow:
                request.setHeader(b"allow", ", ".join(e.allow).encode())
            if e.status == 401:
                request.setHeader(b"www-authenticate", b'Bearer realm="gamed-admin"')
            self._audit(request, method, e.status, e.message)
            return json_response(request, e.status, {"error": e.message})
        if isinstance(e, SharedStateUnavailable):
            # Fail closed: never acknowledge a change that is not cluster-wide. Nothing
            # was applied here either; what is in force stays enforced.
            text = (
                f"{e}; the change was not made (bans and blocks in force are still "
                "enforced on every node); retry when the cluster is back"
            )
            self._audit(request, method, 503, str(e))
            return json_response(request, 503, {"error": text})
        _log.failure("admin request {path} failed", Failure(e), path=request.path)
        self._audit(request, method, 500, type(e).__name__)
        return json_response(request, 500, {"error": f"internal error: {type(e).__name__}"})

    def _when_shared(
        self,
        request: Request,
        method: str,
        answer: defer.Deferred[tuple[int, Any]],
        seq: int,
    ) -> int:
        """A change Redis is storing: once it did (and it was applied here), answer as a
        local change (200 once on disk, else 202); if it could not, 503 (or 409)."""
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def done(result: tuple[int, Any]) -> None:
            if gone:
                return
            status, body = result
            if status == 200 and self.mw.store.seq != seq:
                self._when_durable(request, method, body, self.mw.store.seq)
                return
            self._audit(request, method, status, "")
            request.write(json_response(request, status, body))
            request.finish()

        def failed(f: Failure) -> None:
            if gone:
                return
            assert isinstance(f.value, Exception)
            request.write(self._refused(request, method, f.value))
            request.finish()

        answer.addCallbacks(done, failed)
        return NOT_DONE_YET

    def _shared(
        self,
        kind: str,
        key: object,
        until: float | None,
        reason: str,
        apply: Callable[[float], tuple[int, Any]],
    ) -> _Answer:
        """Run ``apply(now)`` (the local change) at once without --redis; with it, write
        the change to Redis first (``until`` None: an unblock) and apply it once stored."""
        now = self.mw.clock.seconds()
        sync = self.mw.sync
        if sync is None:
            return apply(now)
        version = now
        stored = sync.publish(
            kind, key, None if until is None else until + now, reason, version, kick=True
        )

        def then(ok: bool) -> tuple[int, Any]:
            if not ok:
                raise _HTTPError(
                    409,
                    f"a newer change of {kind} {key} was made on another node: reload and retry",
                )
            return apply(version)

        answer: defer.Deferred[tuple[int, Any]] = stored.addCallback(then)
        return answer

    def _when_durable(self, request: Request, method: str, body: dict[str, Any], seq: int) -> int:
        """Answer once change ``seq`` is on disk (200), or say why it is pending (202)."""
        store = self.mw.store
        d = store.wait(seq)
        store.flush(force=True)  # now, not on the next tick: the admin is waiting
        d.addTimeout(
            ACK_WAIT,
            self.mw.clock,
            onTimeoutCancel=lambda _result, timeout: (
                f"not yet on disk: the write did not finish within {timeout:g}s; kept and retried"
            ),
        )
        gone: list[bool] = []

        def client_left(_: object) -> None:
            gone.append(True)
            d.cancel()

        request.notifyFinish().addErrback(client_left)

        def answer(why: str | None) -> None:
            if gone:
                return
            if why is None:
                status, out = 200, {**body, "durable": True}
            else:
                status, out = 202, {**body, "durable": False, "pending": True, "why": why}
            self._audit(request, method, status, why or "")
            request.write(json_response(request, status, out))
            request.finish()

        def failed(f: Failure) -> None:
            if not f.check(CancelledError):
                _log.failure("admin request {path} failed", f, path=request.path)

        d.addCallback(answer).addErrback(failed)
        return NOT_DONE_YET

    @staticmethod
    def _audit(request: Request, method: str, status: int, error: str) -> None:
        """One log line per admin action (any method but GET), refused or not: the action
        and its target are the path (``POST /admin/users/42/ban``), with the caller's
        address and the answer. Reads are not logged (the console polls them)."""
        if method in ("GET", "HEAD"):
            return
        peer = request.getClientAddress()
        segments = [*(request.prepath or []), *(request.postpath or [])]
        _log.info(
            "admin {method} {path} from {peer}: {status}{error}",
            method=method,
            path="/" + b"/".join(segments).decode("utf-8", "replace"),
            peer=getattr(peer, "host", str(peer)),
            status=status,
            error=f" ({error})" if error else "",
        )

    def _authorize(self, request: Request) -> None:
        expected = self._token()
        if expected is None:
            raise _HTTPError(403, "the admin API is off: start gamed with --admin-token-file")
        refused = bearer_refusal(request, expected)
        if refused is not None:
            raise _HTTPError(401, refused)

    def _route(self, request: Request, method: str) -> _Answer:
        assert request.postpath is not None  # Site.getResourceFor sets it before any render
        path = [seg for seg in request.postpath if seg != b""]
        mw = self.mw

        def need(*allowed: str) -> None:
            if method not in allowed:
                raise _HTTPError(405, f"use {' or '.join(allowed)} here", allow=allowed)

        if path == [b"security"]:
            need("GET")
            return 200, {**mw.stats(), "policy": mw.policy.summary()}
        if path == [b"blocks"]:
            need("GET")
            return 200, mw.blocks_view()
        if path == [b"reload"]:
            need("POST")
            if self.control is None:
                raise _HTTPError(503, "no server control to reload through")
            try:
                result = self.control.reload_config()
            except ConfigError as e:
                # All-or-nothing: a bad table refuses the whole reload (409: the
                # config on disk conflicts with what the server accepts).
                return 409, {"error": f"config reload refused, old config kept: {e}"}
            return 200, result
        # /users/{id} and /ips/{ip}: GET the view, POST /{action} (an unknown one is a 404).
        targets: dict[bytes, tuple[Callable[[bytes], Any], Callable[[Any], Any], _Action]] = {
            b"users": (_user_id, mw.user_view, self._user_action),
            b"ips": (_ip, mw.ip_view, self._ip_action),
        }
        if len(path) in (2, 3) and path[0] in targets:
            parse, view, act = targets[path[0]]
            key = parse(path[1])
            if len(path) == 2:
                need("GET")
                return 200, view(key)
            need("POST")
            answer = act(request, key, path[2])
            if answer is not None:
                return answer
        raise _HTTPError(404, f"no admin call at /admin/{b'/'.join(path).decode(errors='replace')}")

    def _user_action(self, request: Request, uid: int, action: bytes) -> _Answer | None:
        mw = self.mw
        if action == b"unblock":
            return self._shared(
                "user",
                uid,
                None,
                "",
                lambda _now: (200, {"user_id": uid, "unblocked": mw.unblock_user(uid)}),
            )
        if action == b"ban":
            reason = _reason(_body(request), "admin_ban")

            def ban(now: float) -> tuple[int, Any]:
                kicked = mw.ban_user(uid, reason, now=now)
                return 200, {"user_id": uid, "banned": True, "kicked": kicked}

            return self._shared("user", uid, math.inf, reason, ban)
        if action == b"kick":
            # In a cluster the session may be on another node: the kick goes there.
            def kicked(done: bool) -> tuple[int, Any]:
                if not done:
                    raise _HTTPError(404, f"user {uid} is not connected")
                return 200, {"user_id": uid, "kicked": True}

            def unavailable(failure: Failure) -> tuple[int, Any]:
                text = getattr(failure.value, "message", None) or failure.getErrorMessage()
                raise _HTTPError(503, f"kick of user {uid} not sent: {text}")

            answer: defer.Deferred[tuple[int, Any]] = mw.kick_user_anywhere(uid).addCallbacks(
                kicked, unavailable
            )
            return answer
        return None

    def _ip_action(self, request: Request, ip: str, action: bytes) -> _Answer | None:
        mw = self.mw
        if action == b"block":
            body = _body(request)
            duration = body.get("duration")
            if duration is None:
                seconds = math.inf
            elif (
                isinstance(duration, bool)
                or not isinstance(duration, int | float)
                or not 0 < duration <= _MAX_DURATION
            ):
                raise _HTTPError(400, f"duration must be seconds in (0, {_MAX_DURATION:g}] or null")
            else:
                seconds = float(duration)
            reason = _reason(body, "admin_block")

            def block(now: float) -> tuple[int, Any]:
                n_kicked = mw.block_ip(ip, seconds, reason, now=now, share=False)
                return 200, {
                    "ip": ip,
                    "blocked": True,
                    "duration": None if math.isinf(seconds) else seconds,
                    "kicked": n_kicked,
                }

            return self._shared("ip", ip, seconds, reason, block)
        if action == b"unblock":

            def unblock(_now: float) -> tuple[int, Any]:
                lifted = mw.unblock_ip(ip)
                view = mw.ip_view(ip)
                return 200, {
                    "ip": ip,
                    "unblocked": lifted,
                    "still_blocklisted": view["blocklisted"],
                }

            return self._shared("ip", ip, None, "", unblock)
        return None
