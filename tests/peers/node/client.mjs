// A real MCP client on the official TypeScript SDK (@modelcontextprotocol/sdk 1.32.2),
// for mcpwatch's tests. Same CLI contract and output as ../python/client.py.
//
// Why it exists: the integration tests drive real SDK clients through the proxy; the TS
// SDK is the one most MCP clients embed, and it speaks the 2025 era (initialize
// handshake, Mcp-Session-Id, SSE) rather than the 2026 stateless one.
//
// CLI: node client.mjs --url URL [--transport streamable|sse] [--mode auto|legacy]
//                      [--timeout SECONDS] [--script FILE.json] [STEP ...]
// Steps: `list` | `call NAME JSON_ARGS`; script: JSON array of
//   {"op":"list"} / {"op":"call","tool":NAME,"arguments":{...}}.
// Output: one JSON object per line (see client.py). Exit 0 when every step got a protocol
// answer, 2 when connecting failed, 3 when a step failed below the protocol.
// TLS: set NODE_EXTRA_CA_CERTS (read at process start) to trust a test CA.

import fs from 'node:fs';
import { parseArgs } from 'node:util';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';

const { values: opts, positionals } = parseArgs({
  options: {
    url: { type: 'string' },
    transport: { type: 'string', default: 'streamable' },
    // The TS SDK 1.32.2 only knows the handshake era: every mode means `initialize`.
    mode: { type: 'string', default: 'auto' },
    timeout: { type: 'string', default: '20' },
    script: { type: 'string' },
  },
  allowPositionals: true,
  strict: true,
});

const emit = (obj) => process.stdout.write(JSON.stringify(sortKeys(obj)) + '\n');
function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])]));
  return v;
}

function usage(msg) {
  process.stderr.write(`${msg}\n`);
  process.exit(64);
}

function parseSteps() {
  const steps = [];
  if (opts.script) {
    const loaded = JSON.parse(fs.readFileSync(opts.script, 'utf8'));
    if (!Array.isArray(loaded)) usage('script must be a JSON array of steps');
    steps.push(...loaded);
  }
  for (let i = 0; i < positionals.length;) {
    const word = positionals[i];
    if (word === 'list') { steps.push({ op: 'list' }); i += 1; }
    else if (word === 'call') {
      if (i + 2 >= positionals.length) usage('usage: call NAME JSON_ARGS');
      steps.push({ op: 'call', tool: positionals[i + 1], arguments: JSON.parse(positionals[i + 2]) });
      i += 3;
    } else usage(`unknown step ${JSON.stringify(word)} (expected list | call NAME JSON_ARGS)`);
  }
  return steps;
}

function errorOf(err) {
  if (err instanceof McpError) {
    // McpError prefixes "MCP error CODE: "; report the server's message as sent.
    const prefix = `MCP error ${err.code}: `;
    const message = err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message;
    return { kind: 'jsonrpc', code: err.code, message };
  }
  return { kind: 'transport', type: err?.constructor?.name ?? typeof err, message: String(err?.message ?? err) };
}

async function main() {
  if (!opts.url) usage('--url is required');
  if (!['streamable', 'sse'].includes(opts.transport)) usage('--transport must be streamable or sse');
  const steps = parseSteps();
  const timeout = Number(opts.timeout) * 1000;
  const url = new URL(opts.url);
  const transport = opts.transport === 'sse' ? new SSEClientTransport(url) : new StreamableHTTPClientTransport(url);
  let protocolVersion = null;
  const setVersion = transport.setProtocolVersion?.bind(transport);
  transport.setProtocolVersion = (v) => { protocolVersion = v; setVersion?.(v); };

  const client = new Client({ name: 'mcpwatch-node-client', version: '0.1.0' });
  try {
    await client.connect(transport, { timeout });
  } catch (err) {
    emit({ op: 'connect', ok: false, error: errorOf(err) });
    return 2;
  }
  emit({ op: 'connect', ok: true, protocol_version: protocolVersion, server: client.getServerVersion()?.name ?? null });

  let status = 0;
  for (const step of steps) {
    try {
      if (step.op === 'list') {
        const result = await client.listTools(undefined, { timeout });
        emit({ op: 'list', ok: true, tools: result.tools.map((t) => t.name).sort() });
      } else if (step.op === 'call') {
        const result = await client.callTool({ name: String(step.tool), arguments: step.arguments ?? {} }, undefined, { timeout });
        const content = result.content ?? [];
        emit({
          op: 'call',
          tool: String(step.tool),
          ok: true,
          is_error: Boolean(result.isError),
          text: content.filter((c) => c.type === 'text').map((c) => c.text).join('\n'),
          content,
          structured: result.structuredContent ?? null,
        });
      } else {
        emit({ op: String(step.op), ok: false, error: { kind: 'usage', message: 'unknown op' } });
        status = 3;
      }
    } catch (err) {
      const error = errorOf(err);
      const line = { op: String(step.op), ok: false, error };
      if (step.op === 'call') line.tool = String(step.tool);
      emit(line);
      if (error.kind !== 'jsonrpc') status = 3;
    }
  }
  // terminateSession sends DELETE for Streamable HTTP sessions; ignore failures.
  if (opts.transport === 'streamable') await transport.terminateSession?.().catch(() => {});
  await client.close().catch(() => {});
  return status;
}

main().then((code) => process.exit(code), (err) => {
  emit({ op: 'connect', ok: false, error: errorOf(err) });
  process.exit(2);
});
