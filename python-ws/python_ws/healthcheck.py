"""`python -m python_ws.healthcheck`: exit 0 if GET http://127.0.0.1:$WS_PORT/healthz is 200.

For compose's healthcheck; the image has no curl.

Twin: rust-ws/src/healthcheck.rs
"""

from __future__ import annotations

import os
import sys
import urllib.request


def check(port: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(0 if check(os.environ.get("WS_PORT") or "8001") else 1)
