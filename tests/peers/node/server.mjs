// A real MCP server on the official TypeScript SDK (@modelcontextprotocol/sdk 1.32.2),
// for mcpwatch's tests.
//
// Why it exists: the 2025-era transports must be tested against the SDK most clients
// use. One process serves both of them:
//   - Streamable HTTP on --path (default /mcp): sessions (Mcp-Session-Id) and SSE
//     response bodies by default; --json-response for JSON bodies; --stateless for a
//     fresh server per POST and no session id.
//   - legacy HTTP+SSE: GET /sse opens the event stream, POST /messages?sessionId=...
// It records every tools/call it receives (raw JSON-RPC params, before validation) as
// JSON lines to --record FILE.
//
// CLI: node server.mjs [--host 127.0.0.1] [--port 0] [--path /mcp] [--json-response]
//                      [--stateless] [--host-check auto|strict|off] [--record FILE]
// TLS: --certfile PEM --keyfile PEM serve HTTPS (node:https) instead of HTTP.
// Prints `ready HOST:PORT` on stdout once listening.

import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import { parseArgs } from 'node:util';

import express from 'express';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { SSEServerTransport } from '@modelcontextprotocol/sdk/server/sse.js';
import { hostHeaderValidation, localhostHostValidation } from '@modelcontextprotocol/sdk/server/middleware/hostHeaderValidation.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';

const FAKE_SSN = '536-22-8741';
const FAKE_CARD = '4111 1111 1111 1111';
const FAKE_EMAIL = 'jane.doe@example.com';

const { values: opts } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
    path: { type: 'string', default: '/mcp' },
    'json-response': { type: 'boolean', default: false },
    stateless: { type: 'boolean', default: false },
    'host-check': { type: 'string', default: 'auto' },
    record: { type: 'string' },
    certfile: { type: 'string' },
    keyfile: { type: 'string' },
  },
  strict: true,
});

if (opts.record) fs.writeFileSync(opts.record, '');

function record(message) {
  if (!opts.record || !message || message.method !== 'tools/call') return;
  const params = message.params ?? {};
  const entry = { arguments: params.arguments ?? {}, method: 'tools/call', tool: params.name ?? null };
  fs.appendFileSync(opts.record, JSON.stringify(entry) + '\n');
}

/** Wraps the transport's inbound hook so every message is seen before the SDK parses it. */
function recordInbound(transport) {
  const inner = transport.onmessage;
  transport.onmessage = (message, extra) => {
    record(message);
    inner?.(message, extra);
  };
}

function buildServer() {
  const server = new McpServer({ name: 'mcpwatch-peer-node', version: '0.1.0' });
  const text = (t) => ({ content: [{ type: 'text', text: t }] });
  server.registerTool('echo', { description: 'Return the given text unchanged', inputSchema: { text: z.string() } },
    async ({ text: t }) => text(t));
  server.registerTool('add', { description: 'Add two numbers', inputSchema: { a: z.number(), b: z.number() } },
    async ({ a, b }) => text(String(a + b)));
  server.registerTool('lookup_customer', { description: 'Look up a customer record by id', inputSchema: { customer_id: z.string() } },
    async ({ customer_id }) => text(`customer ${customer_id}: Jane Doe, email ${FAKE_EMAIL}, SSN ${FAKE_SSN}, card ${FAKE_CARD}, status active`));
  server.registerTool('delete_records', { description: 'Delete every record of a table', inputSchema: { table: z.string() } },
    async ({ table }) => text(`deleted 42 records from ${table}`));
  server.registerTool('read_file', { description: "Read a file from the server's disk", inputSchema: { path: z.string() } },
    async ({ path }) => text(`contents of ${path}: hello from the node peer`));
  return server;
}

async function connect(transport) {
  const server = buildServer();
  await server.connect(transport);
  recordInbound(transport);
  return server;
}

const app = express();
if (opts['host-check'] === 'auto') {
  if (['127.0.0.1', 'localhost', '::1'].includes(opts.host)) app.use(localhostHostValidation());
} else if (opts['host-check'] === 'strict') {
  app.use(hostHeaderValidation([opts.host.includes(':') ? `[${opts.host}]` : opts.host]));
} else if (opts['host-check'] !== 'off') {
  console.error(`--host-check must be auto, strict or off`);
  process.exit(2);
}
app.use(express.json({ limit: '4mb' }));

const rpcError = (res, status, message) =>
  res.status(status).json({ jsonrpc: '2.0', error: { code: -32000, message }, id: null });

// ---- Streamable HTTP ----
const sessions = new Map();

app.post(opts.path, async (req, res) => {
  try {
    if (opts.stateless) {
      const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: undefined,
        enableJsonResponse: opts['json-response'],
      });
      const server = await connect(transport);
      res.on('close', () => { transport.close(); server.close(); });
      await transport.handleRequest(req, res, req.body);
      return;
    }
    const sid = req.headers['mcp-session-id'];
    let transport = typeof sid === 'string' ? sessions.get(sid) : undefined;
    if (!transport) {
      if (sid !== undefined) return rpcError(res, 404, 'Session not found');
      if (!isInitializeRequest(req.body)) return rpcError(res, 400, 'Bad Request: no session and not an initialize request');
      transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        enableJsonResponse: opts['json-response'],
        onsessioninitialized: (id) => { sessions.set(id, transport); },
      });
      transport.onclose = () => { if (transport.sessionId) sessions.delete(transport.sessionId); };
      await connect(transport);
    }
    await transport.handleRequest(req, res, req.body);
  } catch (err) {
    console.error('POST failed:', err);
    if (!res.headersSent) rpcError(res, 500, 'Internal server error');
  }
});

const sessionRequest = async (req, res) => {
  if (opts.stateless) return rpcError(res, 405, 'Method not allowed');
  const sid = req.headers['mcp-session-id'];
  const transport = typeof sid === 'string' ? sessions.get(sid) : undefined;
  if (!transport) return rpcError(res, 404, 'Session not found');
  await transport.handleRequest(req, res);
};
app.get(opts.path, sessionRequest);
app.delete(opts.path, sessionRequest);

// ---- legacy HTTP+SSE (2024-11-05 transport) ----
const sseSessions = new Map();

app.get('/sse', async (req, res) => {
  const transport = new SSEServerTransport('/messages', res);
  sseSessions.set(transport.sessionId, transport);
  res.on('close', () => sseSessions.delete(transport.sessionId));
  await connect(transport);
});

app.post('/messages', async (req, res) => {
  const sid = req.query.sessionId;
  const transport = typeof sid === 'string' ? sseSessions.get(sid) : undefined;
  if (!transport) return rpcError(res, 404, 'Session not found');
  await transport.handlePostMessage(req, res, req.body);
});

const onListening = () => {
  const addr = listener.address();
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  process.stdout.write(`ready ${host}:${addr.port}\n`);
};
const listener = opts.certfile
  ? https
      .createServer({ cert: fs.readFileSync(opts.certfile), key: fs.readFileSync(opts.keyfile) }, app)
      .listen(Number(opts.port), opts.host, onListening)
  : app.listen(Number(opts.port), opts.host, onListening);
listener.on('error', (err) => { console.error('listen failed:', err); process.exit(1); });
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
