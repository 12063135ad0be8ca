"""``python -m gamed.workers [twistd options] gamed [...]``: how the supervisor starts a worker.

It is twistd itself (``twisted.scripts.twistd.run``); the module name only makes a
worker easy to tell from its parent in ``ps``.
"""

from twisted.scripts.twistd import run

run()
