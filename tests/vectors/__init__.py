"""Effect's published test vectors, shared with the Rust tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EFFECT: dict[str, Any] = json.loads((Path(__file__).parent / "effect.json").read_text())
