"""Connect tokens: the exact form, constant-time verification, expiry, and the gamed-token CLI."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from gamed import token as t
from gamed.errors import Refusal

SECRET = b"0123456789abcdef-test-secret"


def test_the_exact_form_of_protocol_md() -> None:
    tok = t.mint(SECRET, 42, 1_700_000_000)
    mac = hmac.new(SECRET, b"42:1700000000", hashlib.sha256).hexdigest()
    assert tok == f"{mac}:1700000000"
    assert t.verify(SECRET, 42, tok, now=1_699_999_999) == 1_700_000_000


@pytest.mark.parametrize(
    "token, why",
    [
        (None, "required"),
        (123, "malformed"),
        ("", "malformed"),
        ("abc", "malformed"),
        ("abc:", "malformed"),
        ("abc:12x", "malformed"),
        ("abc:-5", "malformed"),
        ("x" * 300, "malformed"),
        ("00" * 32 + ":1700000100", "bad token"),
        ("é" * 10 + ":1700000100", "bad token"),
    ],
)
def test_bad_tokens(token: object, why: str) -> None:
    with pytest.raises(t.TokenError, match=why):
        t.verify(SECRET, 42, token, now=1_700_000_000)


def test_token_is_bound_to_user_secret_and_expiry() -> None:
    tok = t.mint(SECRET, 42, 1_700_000_100)
    with pytest.raises(t.TokenError, match="bad token"):
        t.verify(SECRET, 43, tok, now=1_700_000_000)
    with pytest.raises(t.TokenError, match="bad token"):
        t.verify(b"another-secret-of-16+", 42, tok, now=1_700_000_000)
    mac, _, _ = tok.partition(":")
    with pytest.raises(t.TokenError, match="bad token"):
        t.verify(SECRET, 42, f"{mac}:1800000000", now=1_700_000_000)  # a later expiry


def test_expiry_is_honoured() -> None:
    tok = t.mint(SECRET, 1, 1000)
    assert t.verify(SECRET, 1, tok, now=999.9) == 1000
    with pytest.raises(t.TokenError, match="expired"):
        t.verify(SECRET, 1, tok, now=1000)


def test_verify_uses_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(t.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    t.verify(SECRET, 1, t.mint(SECRET, 1, 10), now=0)
    assert calls == [1]


def test_authenticator_raises_a_closing_401() -> None:
    now = [1000.0]
    auth = t.authenticator(
        lambda: SECRET, lambda: now[0], lambda text: Refusal(401, text, close=True)
    )
    auth(5, t.mint(SECRET, 5, 2000))
    with pytest.raises(Refusal) as e:
        auth(5, None)
    assert e.value.code == 401 and e.value.close
    now[0] = 2000
    with pytest.raises(Refusal, match="expired"):
        auth(5, t.mint(SECRET, 5, 2000))


def test_read_secret_strips_and_refuses_short(tmp_path: Path) -> None:
    f = tmp_path / "s"
    f.write_bytes(SECRET + b"\n")
    assert t.read_secret(str(f)) == SECRET
    f.write_bytes(b"short\n")
    with pytest.raises(ValueError, match="at least 16"):
        t.read_secret(str(f))


def test_cli_prints_a_token_that_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "s"
    f.write_bytes(SECRET)
    monkeypatch.setattr(t.time, "time", lambda: 1_000_000.5)
    assert t.main(["--secret-file", str(f), "--user-id", "7", "--ttl", "60"]) == 0
    tok = capsys.readouterr().out.strip()
    assert tok.endswith(":1000060")
    assert t.verify(SECRET, 7, tok, now=1_000_030) == 1_000_060


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--user-id", "7"], "--secret-file"),
        (["--secret-file", "/nonexistent/s", "--user-id", "7"], "cannot read"),
        (["--secret-file", "SECRET", "--user-id", "-1"], "user_id"),
        (["--secret-file", "SECRET", "--user-id", "1", "--ttl", "0"], "--ttl"),
    ],
)
def test_cli_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    f = tmp_path / "s"
    f.write_bytes(SECRET)
    args = [str(f) if a == "SECRET" else a for a in args]
    with pytest.raises(SystemExit) as e:
        t.main(args)
    assert e.value.code == 2
    assert fragment in capsys.readouterr().err
