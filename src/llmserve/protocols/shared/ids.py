"""Response ids and timestamps."""

from __future__ import annotations

import time
import uuid


def random_id(prefix: str) -> str:
    """A unique response id such as ``chatcmpl-<32 hex digits>``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    """Unix time in whole seconds, for ``created`` fields."""
    return int(time.time())
