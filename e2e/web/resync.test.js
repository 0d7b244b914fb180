// The web client fills a gap the server could not fill (docs/protocol.md): after an
// `unavailable` error without `ref` it shows nothing more from that connection (what
// follows is past the gap), closes it with 4000, reconnects and rejoins with `since` at
// the last message it showed, so the replay fills the gap.
//
// The page comes from a real chat-server (`--dev`); its WebSocket is answered by the test
// through Playwright's routeWebSocket, which plays the server's side frame by frame: the
// failure (history unreadable while live traffic skipped an offset) cannot be caused on
// purpose in a real cluster at a chosen moment. The frames are the protocol's own.
// Every wait is for a condition, bounded in time; the chat-server is stopped by PID.
import { test } from "node:test";
import assert from "node:assert/strict";
import { launchChromium } from "./browser.js";
import { startServer, stopServer } from "./server.js";

const WAIT = 10_000;
const EPOCH = "e0000000000000001";
const message = (offset, body) => JSON.stringify({
  type: "message", room: "lobby", epoch: EPOCH, offset, from: "bob", body, ts: Date.now(),
});

test("after an unavailable error without ref the page resumes from the last message it showed", async () => {
  const server = await startServer({}, ["--dev"]);
  const browser = await launchChromium();
  try {
    const page = await browser.newPage();
    const connections = [];
    await page.routeWebSocket(/\/ws/, (ws) => {
      const c = { joins: [], closed: null };
      connections.push(c);
      // With a handler, Playwright leaves the close to it: answer it, as a server does.
      ws.onClose((code, reason) => { c.closed = { code, reason }; ws.close({ code, reason }); });
      ws.send(JSON.stringify({ type: "welcome", user: "alice", session: `s${connections.length}`, node: "n1" }));
      ws.onMessage((text) => {
        const f = JSON.parse(String(text));
        if (f.type !== "join") return;
        c.joins.push(f);
        if (connections.length === 1) {
          // Live: 1, then the gap the server could not fill, then 3 (past the gap).
          ws.send(JSON.stringify({ type: "joined", room: "lobby", epoch: EPOCH, offset: 0, recovered: true, members: ["alice"], member_count: 1 }));
          ws.send(message(1, "before the gap"));
          ws.send(JSON.stringify({ type: "error", code: "unavailable", message: "room `lobby`: history unavailable, messages may be missing" }));
          ws.send(message(3, "after the gap"));
        } else {
          // The resumed join: replay everything after `since`.
          ws.send(JSON.stringify({ type: "joined", room: "lobby", epoch: EPOCH, offset: 3, recovered: true, members: ["alice"], member_count: 1 }));
          ws.send(message(2, "in the gap"));
          ws.send(message(3, "after the gap"));
        }
      });
    });
    await page.goto(`http://${server.public}/`);
    await page.fill("#user", "alice");
    await page.fill("#room", "lobby");
    await page.click("#connect");
    const logLines = () => page.$$eval("#log div", (ds) => ds.map((d) => d.textContent));
    await page.waitForFunction(() => document.getElementById("log").textContent.includes("after the gap"),
      undefined, { timeout: WAIT, polling: 50 }).catch(async (e) => {
      throw new Error(`${e.message}\nlog: ${JSON.stringify(await logLines())}\nstatus: ${await page.textContent("#status")}\nconnections: ${JSON.stringify(connections)}`);
    });

    assert.equal(connections.length, 2, "one reconnect");
    const [first, second] = connections;
    assert.deepEqual(first.closed?.code, 4000, "the page closed the connection past the gap itself");
    assert.deepEqual(first.joins.map((j) => j.since ?? null), [null]);
    assert.deepEqual(second.joins.map((j) => j.since), [{ epoch: EPOCH, offset: 1 }],
      "rejoined from the last message shown, not from the one past the gap");
    const bodies = (await logLines()).filter((l) => l.startsWith("bob: ")).map((l) => l.slice(5));
    assert.deepEqual(bodies, ["before the gap", "in the gap", "after the gap"], "each once, in order");
    assert.ok((await logLines()).some((l) => l.startsWith("error unavailable")), "the error is shown");
  } finally {
    await browser.close();
    await stopServer(server);
  }
});
