"""What every benchmark's result file records about where and when it ran, so that
the generated Performance page can say so (docs/gen_pages.py)."""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any


def machine() -> dict[str, Any]:
    """CPU count, Python version, operating system and architecture, and today's date (UTC)."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.machine()}",
        "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
    }
