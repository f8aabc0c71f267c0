"""The core (what a call is and costs) imports no web framework."""
from __future__ import annotations

import subprocess
import sys

from config.settings import ROOT


def test_core_imports_no_flask():
    code = ("import sys, core.usage, core.prices; "
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug', 'service')); "
            "print(loaded); sys.exit(1 if loaded else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
