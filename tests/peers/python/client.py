"""A real MCP client on the official Python SDK (mcp 2.3.0), for mcpwatch's tests.

Why it exists: the integration tests drive real SDK clients through the proxy and
assert on what they saw. This script connects once, runs a script of steps and prints
one JSON line per step, so the Rust side can parse the outcome.

CLI:
  client.py --url URL [--transport streamable|sse] [--mode auto|legacy|2026-07-28]
            [--timeout SECONDS] [--script FILE.json] [STEP ...]

Steps (argv, consumed left to right):  `list`  |  `call NAME JSON_ARGS`
Script file: a JSON array of {"op": "list"} / {"op": "call", "tool": NAME, "arguments": {...}}.

Output, one JSON object per line on stdout:
  {"op":"connect","ok":true,"protocol_version":"...","server":"name"}
  {"op":"list","ok":true,"tools":["add","echo",...]}
  {"op":"call","tool":"echo","ok":true,"is_error":false,"text":"hi","content":[...],"structured":...}
  {"op":"call","tool":"x","ok":false,"error":{"kind":"jsonrpc","code":-32602,"message":"..."}}
  {"op":"call","tool":"x","ok":false,"error":{"kind":"transport","type":"...","message":"..."}}
Exit code: 0 when every step got a protocol answer (a JSON-RPC error is an answer),
2 when connecting failed, 3 when any step failed below the protocol (transport error).
TLS: honours SSL_CERT_FILE / SSL_CERT_DIR (the SDK's httpx2 reads them).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio
from mcp.client import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def parse_steps(argv: list[str], script: str | None) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    if script:
        with open(script, encoding="utf-8") as f:
            loaded = json.load(f)
        if not isinstance(loaded, list):
            raise SystemExit("script must be a JSON array of steps")
        steps.extend(loaded)
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "list":
            steps.append({"op": "list"})
            i += 1
        elif word == "call":
            if i + 2 >= len(argv):
                raise SystemExit("usage: call NAME JSON_ARGS")
            steps.append({"op": "call", "tool": argv[i + 1], "arguments": json.loads(argv[i + 2])})
            i += 3
        else:
            raise SystemExit(f"unknown step {word!r} (expected list | call NAME JSON_ARGS)")
    return steps


def error_of(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, MCPError):
        return {"kind": "jsonrpc", "code": exc.code, "message": str(exc.error.message)}
    # anyio task groups wrap transport failures; report the innermost one.
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return {"kind": "jsonrpc", "code": exc.code, "message": str(exc.error.message)}
    return {"kind": "transport", "type": type(exc).__name__, "message": str(exc)}


def content_json(content: list[Any]) -> list[Any]:
    return [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in content]


async def run(args: argparse.Namespace, steps: list[dict[str, Any]]) -> int:
    if args.transport == "sse":
        transport = sse_client(args.url, timeout=args.timeout)
    else:
        transport = streamable_http_client(args.url)
    status = 0
    try:
        async with Client(transport, mode=args.mode, read_timeout_seconds=args.timeout) as client:
            info = client.server_info
            emit(
                {
                    "op": "connect",
                    "ok": True,
                    "protocol_version": client.protocol_version,
                    "server": info.name if info is not None else None,
                }
            )
            for step in steps:
                op = step.get("op")
                try:
                    if op == "list":
                        result = await client.list_tools()
                        emit({"op": "list", "ok": True, "tools": sorted(t.name for t in result.tools)})
                    elif op == "call":
                        name = str(step.get("tool"))
                        result = await client.call_tool(name, step.get("arguments") or {})
                        texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
                        emit(
                            {
                                "op": "call",
                                "tool": name,
                                "ok": True,
                                "is_error": bool(result.is_error),
                                "text": "\n".join(texts),
                                "content": content_json(result.content),
                                "structured": result.structured_content,
                            }
                        )
                    else:
                        emit({"op": str(op), "ok": False, "error": {"kind": "usage", "message": "unknown op"}})
                        status = 3
                except Exception as exc:  # noqa: BLE001 - every failure becomes an output line
                    err = error_of(exc)
                    line: dict[str, Any] = {"op": str(op), "ok": False, "error": err}
                    if op == "call":
                        line["tool"] = str(step.get("tool"))
                    emit(line)
                    if err["kind"] != "jsonrpc":
                        status = 3
    except Exception as exc:  # noqa: BLE001
        err = error_of(exc)
        emit({"op": "connect", "ok": False, "error": err})
        return 2
    return status


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--transport", choices=["streamable", "sse"], default="streamable")
    ap.add_argument("--mode", default="auto", help="auto | legacy | 2026-07-28")
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--script", default=None)
    ap.add_argument("steps", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    steps = parse_steps(args.steps, args.script)
    return anyio.run(run, args, steps)


if __name__ == "__main__":
    sys.exit(main())
