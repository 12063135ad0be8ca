"""twisted/plugins/ must stay cheap to import: twistd imports every plugin module.

import-linter cannot check this: ``twisted.plugins`` is Twisted's package, and
our directory joins it only at run time (its ``__path__`` is extended), so the
import graph import-linter builds never sees ``gamed_plugin.py``. A fresh
interpreter reports what importing the plugin modules pulls in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
import twisted.plugins.gamed_plugin
import twisted.plugins.gamed_reactors
print(json.dumps({
    "plugin": twisted.plugins.gamed_plugin.__file__,
    "modules": sorted(sys.modules),
}))
"""


def test_plugin_modules_import_no_server_code_and_no_reactor(tmp_path: Path) -> None:
    # cwd outside the checkout: the plugin is found through the install, as twistd finds it.
    run = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    seen = json.loads(run.stdout)
    assert Path(seen["plugin"]).name == "gamed_plugin.py"
    modules = set(seen["modules"])
    # The ServiceMaker names gamed.tap as a string: twistd imports it only for `twistd gamed`.
    assert sorted(m for m in modules if m.startswith("gamed.")) == []
    # Importing the reactor installs the default one, before `--reactor` could choose.
    assert "twisted.internet.reactor" not in modules
