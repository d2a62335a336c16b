"""Where the recorded source payloads live (``../shared/fixtures`` next to the repo).

``FLOW_FIXTURES_DIR`` points elsewhere, e.g. when the repo is checked out alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def fixtures_dir() -> Path:
    override = os.environ.get("FLOW_FIXTURES_DIR")
    if override:
        return Path(override)
    # tests/fixtures.py -> tests -> <repo> -> <repo's parent>/shared/fixtures
    return Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def load_fixture(relative: str) -> dict[str, Any]:
    """A recorded JSON body, e.g. ``load_fixture("jira/issue_deleted/x.json")``."""
    data = json.loads((fixtures_dir() / relative).read_text(encoding="utf-8"))
    assert isinstance(data, dict), relative
    return data
