# SPDX-License-Identifier: GPL-2.0
"""make shell: a guest with its console on this terminal."""

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from guest import Guest  # noqa: E402

g = Guest("release", mem="2G", name="shell", shell=True)
qmp = g.dir / "qmp.sock"
g.dir.mkdir(parents=True, exist_ok=True)
for f in ("qmp.sock", "agent.sock"):
    (g.dir / f).unlink(missing_ok=True)
print(f"""==> guest console below; quit with Ctrl-A X
    QMP socket: {qmp}
    drive the balloon from another terminal:
      {Path(sys.executable).parent}/qmp-shell {qmp}
      (QEMU) balloon value=1073741824
      (QEMU) query-balloon
""")
sys.exit(subprocess.call(g.command()))
