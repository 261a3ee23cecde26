"""Response ids and timestamps."""

from __future__ import annotations

import time
import uuid


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
