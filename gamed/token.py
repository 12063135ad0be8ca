"""Connect tokens: mint and verify ``hex(HMAC-SHA256(secret, "user_id:expiry")) + ":" + expiry``.

Pure functions shared by the server (the security plugin's authenticator) and
the ``gamed-token`` command that a login service, or an operator, runs to hand
a client its token. ``expiry`` is Unix seconds; a token is good while
``now < expiry``. Verification compares MACs in constant time.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import sys
import time
from collections.abc import Callable

#: Longest token we look at; anything longer is refused before hashing.
MAX_TOKEN_CHARS = 200
#: Default lifetime of a minted token.
DEFAULT_TTL = 3600
_MAX_U32 = 2**32 - 1


class TokenError(ValueError):
    """A token that does not verify; ``str()`` says why, without echoing secrets."""


def read_secret(path: str) -> bytes:
    """The secret file's bytes, without surrounding whitespace; an empty secret is an error."""
    with open(path, "rb") as f:
        secret = f.read().strip()
    if len(secret) < 16:
        raise ValueError(f"secret file {path} holds {len(secret)} bytes; use at least 16")
    return secret


def _mac(secret: bytes, user_id: int, expiry: int) -> str:
    return hmac.new(secret, f"{user_id}:{expiry}".encode(), hashlib.sha256).hexdigest()


def mint(secret: bytes, user_id: int, expiry: int) -> str:
    """The token for ``user_id`` good until ``expiry`` (Unix seconds)."""
    if not 0 <= user_id <= _MAX_U32:
        raise ValueError(f"user_id must be 0..{_MAX_U32}, got {user_id}")
    if expiry < 0:
        raise ValueError(f"expiry must be >= 0, got {expiry}")
    return f"{_mac(secret, user_id, expiry)}:{expiry}"


def verify(secret: bytes, user_id: int, token: object, now: float) -> int:
    """Return the token's expiry, or raise TokenError saying what is wrong with it."""
    if token is None:
        raise TokenError("a token is required: Connect must carry 'token'")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise TokenError("malformed token")
    mac, sep, expiry_text = token.rpartition(":")
    if not sep or not expiry_text.isascii() or not expiry_text.isdigit() or len(expiry_text) > 12:
        raise TokenError("malformed token: expected HEXMAC:EXPIRY")
    expiry = int(expiry_text)
    expected = _mac(secret, user_id, expiry)
    # Compare bytes: compare_digest refuses non-ASCII str, and the comparison
    # must take the same time whatever the client sent.
    if not hmac.compare_digest(mac.encode("utf-8", "replace"), expected.encode()):
        raise TokenError("bad token")
    if now >= expiry:
        raise TokenError("token expired")
    return expiry


def authenticator(
    secret: Callable[[], bytes],
    clock_seconds: Callable[[], float],
    refuse: Callable[[str], Exception],
) -> Callable[[int, object], None]:
    """An ``authenticate(user_id, token)`` for IServerControl.set_authenticator.

    ``secret`` is called each time (so a reload can swap it); ``refuse(text)``
    builds the exception to raise (a ``Refusal(401, text, close=True)``).
    """

    def authenticate(user_id: int, token: object) -> None:
        try:
            verify(secret(), user_id, token, clock_seconds())
        except TokenError as e:
            raise refuse(str(e)) from None

    return authenticate


def main(argv: list[str] | None = None) -> int:
    """``gamed-token --secret-file FILE --user-id N [--ttl SECONDS]``: print a token."""
    parser = argparse.ArgumentParser(
        prog="gamed-token",
        description="Print a Connect token for gamed (HMAC-SHA256 over 'user_id:expiry').",
    )
    parser.add_argument("--secret-file", required=True, help="the server's --auth-secret-file")
    parser.add_argument("--user-id", required=True, type=int, help="the user id to vouch for")
    parser.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TTL,
        help=f"seconds the token stays valid [default: {DEFAULT_TTL}]",
    )
    args = parser.parse_args(argv)
    if args.ttl <= 0:
        parser.error("--ttl must be a positive number of seconds")
    try:
        secret = read_secret(args.secret_file)
        token = mint(secret, args.user_id, int(time.time()) + args.ttl)
    except OSError as e:
        parser.error(f"cannot read --secret-file {args.secret_file}: {e.strerror}")
    except ValueError as e:
        parser.error(str(e))
    sys.stdout.write(token + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
