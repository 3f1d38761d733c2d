"""A real MCP client on the official Python SDK that launches a stdio server, for
`mcpwatch wrap` tests.

Why it exists: `client.py` speaks HTTP; a client that governs a stdio server launches
`mcpwatch wrap -- SERVER...` as its server command, exactly as a configured client
(Claude Code, Cursor...) would. Same steps and output lines as `client.py`.

CLI:  wrap_stdio_client.py [--timeout S] [--script FILE.json] [STEP ...] -- CMD ARGS...
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import anyio  # noqa: E402
from mcp.client import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402

from client import content_json, emit, error_of, parse_steps  # noqa: E402


async def run(timeout: float, steps: list[dict[str, Any]], command: list[str]) -> int:
    params = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
    status = 0
    try:
        async with Client(stdio_client(params), read_timeout_seconds=timeout) as client:
            info = client.server_info
            emit({"op": "connect", "ok": True, "protocol_version": client.protocol_version, "server": info.name if info else None})
            for step in steps:
                op = step.get("op")
                try:
                    if op == "list":
                        result = await client.list_tools()
                        emit({"op": "list", "ok": True, "tools": sorted(t.name for t in result.tools)})
                    else:
                        name = str(step.get("tool"))
                        result = await client.call_tool(name, step.get("arguments") or {})
                        texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
                        emit({"op": "call", "tool": name, "ok": True, "is_error": bool(result.is_error), "text": "\n".join(texts), "content": content_json(result.content)})
                except Exception as exc:  # noqa: BLE001 - every failure becomes an output line
                    err = error_of(exc)
                    emit({"op": str(op), "tool": str(step.get("tool")), "ok": False, "error": err})
                    if err["kind"] != "jsonrpc":
                        status = 3
    except Exception as exc:  # noqa: BLE001
        emit({"op": "connect", "ok": False, "error": error_of(exc)})
        return 2
    return status


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv:
        raise SystemExit("usage: wrap_stdio_client.py [STEP ...] -- CMD ARGS...")
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--script", default=None)
    ap.add_argument("steps", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv[:cut])
    return anyio.run(run, args.timeout, parse_steps(args.steps, args.script), argv[cut + 1 :])


if __name__ == "__main__":
    sys.exit(main())
