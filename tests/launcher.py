"""The environment a distributed launcher sets, and keeping tests from leaking it.

``msjoe.rl.engine.ensure_distributed_env`` fills these variables in a plain process (rank 0 of
1, a free MASTER_PORT). A test that builds an engine must start without them and must not leave
them behind: a later test that runs a stage as a subprocess would inherit a MASTER_PORT that
this process's process group still listens on, and the stage would fail with EADDRINUSE.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR")


def clear_launcher_env(mp: pytest.MonkeyPatch) -> None:
    """Unset the launcher variables for ``mp``'s scope; whatever is written to them later (by
    ``ensure_distributed_env``) is removed again when ``mp`` is undone."""
    for key in LAUNCHER_VARS:
        mp.setenv(key, "")  # records the original state (set or not), which undo restores
        mp.delenv(key)


def without_launcher_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default: this process's) for a subprocess that starts its own world."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k not in LAUNCHER_VARS}
