// The web client keeps a JWT session alive past its token's `exp`, in a real browser
// against a real chat-server (HS256 tokens, no anonymous users):
//
// - With `?token_url=` the page fetches its token from a token endpoint on its own origin
//   (a tiny front server here, as an application's reverse proxy would be: `/token` it
//   answers itself, everything else, WebSocket upgrades included, it passes to the
//   chat-server), sends it in its first frame (never in the URL) and sends `refresh`
//   with a fresh one before each token expires. Tokens live 8 s; after 18 s the first
//   session is still the only one the server ever accepted, none expired, and the
//   endpoint was asked for several tokens. A `token_url` on another origin is ignored.
// - Without it, a pasted token that is about to expire ends the session with 4003 and the
//   page says to paste a new token (it does not reconnect with the dead one); a new
//   token pasted and Connect get back in.
//
// Every wait is for a condition, bounded in time; the chat-server is stopped by PID.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { createServer, request as httpRequest } from "node:http";
import { connect as tcpConnect } from "node:net";
import { launchChromium } from "./browser.js";
import { startServer, stopServer } from "./server.js";

const SECRET = "web-token-test-secret-0123456789abcdef";
const WAIT = 10_000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const nowSecs = () => Math.floor(Date.now() / 1000);
const b64url = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

/** An HS256 JWT for `sub` expiring at `exp` (Unix seconds). */
function jwt(sub, exp) {
  const unsigned = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url({ sub, exp })}`;
  return `${unsigned}.${createHmac("sha256", SECRET).update(unsigned).digest("base64url")}`;
}

async function metric(server, name) {
  const body = await (await fetch(`http://${server.admin}/metrics`)).text();
  const line = body.split("\n").find((l) => l.startsWith(name + " "));
  return line ? Number(line.split(" ").pop()) : 0;
}

/**
 * A front server on its own loopback port: `GET /token` answers `token()`, every other
 * request and WebSocket upgrade goes to the chat-server at `upstream` (host:port).
 */
async function startFront(upstream, token) {
  const [host, port] = upstream.split(":");
  const front = createServer((req, res) => {
    if (req.url === "/token") { res.writeHead(200, { "content-type": "text/plain" }).end(token()); return; }
    const proxied = httpRequest({ host, port, path: req.url, method: req.method, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode, up.headers);
      up.pipe(res);
    });
    proxied.on("error", () => res.writeHead(502).end());
    req.pipe(proxied);
  });
  front.on("upgrade", (req, socket, head) => {
    const up = tcpConnect(Number(port), host, () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      up.write(lines.join("\r\n") + "\r\n\r\n");
      if (head.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    const close = () => { up.destroy(); socket.destroy(); };
    up.on("error", close);
    socket.on("error", close);
  });
  await new Promise((r) => front.listen(0, "127.0.0.1", r));
  return front;
}

const status = (page) => page.textContent("#status");
const waitStatus = (page, re) => page.waitForFunction(
  (src) => new RegExp(src).test(document.getElementById("status").textContent), re.source,
  { timeout: WAIT, polling: 50 });

test("the web client refreshes its token before exp, and asks for a new one after a 4003",
  { timeout: 90_000 }, async () => {
    const server = await startServer({ CHAT_JWT_HS256_SECRET: SECRET, CHAT_ALLOWED_ORIGINS: "*" });
    const chatOrigin = `http://${server.public}`;
    let issued = 0;
    const front = await startFront(server.public, () => { issued += 1; return jwt("alice", nowSecs() + 8); });
    const frontOrigin = `http://127.0.0.1:${front.address().port}`;
    let browser;
    try {
      browser = await launchChromium();

      // A token endpoint on another origin is ignored (and the page's CSP would refuse it).
      const x = await (await browser.newContext()).newPage();
      await x.goto(`${frontOrigin}/?token_url=${encodeURIComponent(`${chatOrigin}/token`)}`);
      await x.waitForFunction(() => document.getElementById("log").textContent.includes("token_url ignored"),
        null, { timeout: WAIT, polling: 50 });
      assert.equal(issued, 0);

      // With a token endpoint on the page's origin: one session outlives two token lifetimes.
      const a = await (await browser.newContext()).newPage();
      const upgrades = [];
      a.on("websocket", (ws) => upgrades.push(ws.url()));
      await a.goto(`${frontOrigin}/?token_url=/token`);
      await a.click("#connect");
      await waitStatus(a, /^connected as alice on /);
      assert.ok(upgrades.length === 1 && !upgrades[0].includes("token"), `the token stays out of the URL: ${upgrades}`);
      await sleep(18_000);
      assert.match(await status(a), /^connected as alice on /);
      assert.equal(await metric(server, "chat_connections_accepted_total"), 1, "one session, never reconnected");
      assert.equal(await metric(server, "chat_sessions_expired_total"), 0);
      assert.ok(issued >= 3, `the endpoint issued ${issued} tokens (first + refreshes)`);
      assert.ok(!(await a.textContent("#log")).includes("error"), await a.textContent("#log"));

      // A pasted token about to lapse (accepted within the 5 s leeway): the session ends
      // with 4003 and the page asks for a new token instead of reconnecting with it.
      const b = await (await browser.newContext()).newPage();
      await b.goto(chatOrigin);
      await b.fill("#token", jwt("bob", nowSecs() - 3));
      await b.click("#connect");
      await waitStatus(b, /^token expired: paste a new token/);
      assert.equal(await metric(server, "chat_sessions_expired_total"), 1);
      const accepted = await metric(server, "chat_connections_accepted_total");
      await sleep(1_500);
      assert.equal(await metric(server, "chat_connections_accepted_total"), accepted, "no reconnect with the dead token");
      await b.fill("#token", jwt("bob", nowSecs() + 600));
      await b.click("#connect");
      await waitStatus(b, /^connected as bob on /);
    } finally {
      await browser?.close();
      front.close();
      await stopServer(server);
    }
  });
