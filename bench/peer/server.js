// Reference peer: the minimal Node.js `ws` broadcast server the benchmark compares against.
// The room is the URL path; every text frame goes to the other members of that room.
// Run by the harness (`python -m bench`), which installs `ws` into bench/peer with npm.
'use strict';
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const rooms = new Map();
const server = http.createServer((req, res) => { res.writeHead(426); res.end(); });
const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 65536 });

wss.on('connection', (ws, req) => {
  const room = req.url;
  let members = rooms.get(room);
  if (members === undefined) {
    members = new Set();
    rooms.set(room, members);
  }
  members.add(ws);
  ws.on('message', (data, isBinary) => {
    for (const other of members) {
      if (other !== ws && other.readyState === WebSocket.OPEN) other.send(data, { binary: isBinary });
    }
  });
  ws.on('close', () => {
    members.delete(ws);
    if (members.size === 0) rooms.delete(room);
  });
  ws.on('error', () => {});
});

server.listen(Number(process.env.PORT || 0), process.env.HOST || '127.0.0.1', () => {
  const { address, port } = server.address();
  console.log(`peer listening ws://${address}:${port}`);
});
process.on('SIGTERM', () => process.exit(0));
