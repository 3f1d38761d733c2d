"""The python peer's tools served over stdio, for `mcpwatch wrap` tests.

Why it exists: `mcpwatch wrap` governs stdio servers, so its tests need a real SDK server
speaking stdio. This serves exactly the tools of `server.py` (same `build_server`, so
`lookup_customer` returns an SSN and a card number and `delete_records` is the
destructive one) and records every `tools/call` it actually receives, so a test can
prove a denied call never reached it.

CLI:  wrap_stdio_server.py [--record FILE]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from server import Recorder, build_server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", default=None, help="append every tools/call as a JSON line here")
    args = ap.parse_args()
    build_server(Recorder(args.record)).run("stdio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
