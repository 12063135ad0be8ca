"""Install Twisted's asyncio reactor on a uvloop loop (`twistd --reactor uvloop`).

Offered for measurement and for deployments that standardise on uvloop; the
default epoll reactor was faster for gamed's fan-out here (docs/performance.md).
"""

from __future__ import annotations


def install() -> None:
    import asyncio

    try:
        import uvloop
    except ImportError as e:  # pragma: no cover - depends on the install
        raise SystemExit("gamed: --reactor uvloop needs uvloop (pip install 'gamed[bench]')") from e
    from twisted.internet import asyncioreactor

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
