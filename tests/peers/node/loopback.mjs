// Preload (`node --import ./loopback.mjs ...`) that pins every port-only `listen()` to a
// loopback address, for third-party servers such as server-everything that call
// `app.listen(PORT)` and would otherwise bind all interfaces. The address comes from
// MCPWATCH_PEER_HOST (default 127.0.0.1). Tests must only ever serve on loopback.
import net from 'node:net';

const host = process.env.MCPWATCH_PEER_HOST || '127.0.0.1';
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function patchedListen(...args) {
  if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]))) {
    const port = Number(args[0]);
    const rest = args.slice(1);
    // listen(port, cb) / listen(port, backlog, cb): insert the host after the port.
    if (typeof rest[0] !== 'string') return listen.call(this, port, host, ...rest);
  } else if (args[0] && typeof args[0] === 'object' && args[0].host === undefined && args[0].path === undefined) {
    return listen.call(this, { ...args[0], host }, ...args.slice(1));
  }
  return listen.apply(this, args);
};
