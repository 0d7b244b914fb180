// Two browser tabs chat through the web client served by a real ChatCluster on loopback
// (`chat-local-cluster`: redis-server, two chat-server nodes, haproxy with the CHATNODE
// sticky cookie), as a new user would after the README's quick start. What it proves:
//
// - Tab A (alice) loads the page through haproxy and gets a node from the cookie; tab B
//   (bob, a separate browser profile) is pinned by its cookie to the other node, so every
//   message between them crosses nodes through Redis. Room messages flow both ways,
//   presence shows both users, a direct message arrives.
// - Tab A's node is known three ways that must agree: the node named in the `welcome`
//   frame (the page's status line), the CHATNODE cookie, and /admin/status of each node
//   (one connection on each).
// - Draining A's node (POST /admin/drain): A shows the reconnect notice and is
//   disconnected (the other node still has only B's connection). B then sends a message
//   while A is disconnected; it is published (B sees it) and A does not have it. A
//   reconnects through haproxy and lands on the other node: the welcome node changes, that
//   node now has both connections, and haproxy has rewritten A's cookie to it. A rejoins
//   the room with `since` and `recovered: true`, and the message sent in the gap arrives
//   by replay. After one more message from B, A's log holds the messages from before,
//   during and after the drain exactly once each and in that order, and A's room
//   messages are exactly the five sent, each once, in order. Chat works both ways after.
// - The drained node ends its drain by itself ("drain complete: no connection left", no
//   force-close at the deadline) and exits with status 0.
//
// The gap is made deterministic with Playwright's clock in A's profile: it holds the
// page's reconnect timer (the `after_ms` wait) until B's message has been published, then
// runs it. Every wait is for a condition, bounded in time. Every process the cluster
// starts is stopped (SIGTERM to chat-local-cluster, which stops them; SIGKILL by PID
// after a timeout) and checked to be gone.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { readFileSync, readdirSync } from "node:fs";
import { launchChromium } from "./browser.js";

const CLUSTER_BIN = process.env.CHAT_LOCAL_CLUSTER_BIN
  ?? new URL("../../target/debug/chat-local-cluster", import.meta.url).pathname;
const SERVER = process.env.CHAT_SERVER_BIN; // default: next to chat-local-cluster
const WAIT = 10_000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value (returned), failing after `within` ms. */
async function until(what, fn, within = WAIT) {
  const deadline = Date.now() + within;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${within} ms waiting for ${what}`);
    await sleep(50);
  }
}

/** Direct children of `pid` (every thread's), from /proc. */
function childrenOf(pid) {
  const out = [];
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    out.push(...readFileSync(`/proc/${pid}/task/${t}/children`, "utf8").split(/\s+/).filter(Boolean).map(Number));
  }
  return out;
}

/** State of `pid` from /proc/PID/stat: null when gone, else { state, exitCode }. */
function procState(pid) {
  let stat;
  try { stat = readFileSync(`/proc/${pid}/stat`, "utf8"); } catch { return null; }
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // f[0] is field 3 (state)
  return { state: f[0], exitCode: Number(f[49]) }; // field 52: waitpid-style exit status
}

const alive = (pid) => { const s = procState(pid); return s !== null && s.state !== "Z"; };

/**
 * Starts `chat-local-cluster --nodes 2` and parses what it prints: the haproxy web-client
 * URL and each node's name, public and admin address and PID.
 */
async function startCluster() {
  const args = ["--nodes", "2", "--server-arg=--drain-reconnect-window=300ms", "--server-arg=--drain-deadline=5s"];
  if (SERVER) args.push("--server-binary", SERVER);
  const child = spawn(CLUSTER_BIN, args, {
    stdio: ["ignore", "pipe", "pipe"],
    // Node logs are copied to chat-local-cluster's stderr, read below.
    env: { ...process.env, CHAT_E2E_SERVER_LOGS: "1" },
  });
  const cluster = { child, nodes: [], web: null, pids: [], logs: [], exited: false };
  child.on("exit", () => { cluster.exited = true; });
  createInterface({ input: child.stderr }).on("line", (l) => {
    cluster.logs.push(l);
    if (!l.startsWith("{")) process.stderr.write(`chat-local-cluster: ${l}\n`);
  });
  const lines = createInterface({ input: child.stdout });
  const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  try {
    for await (const line of lines) {
      let m;
      if ((m = line.match(/web client \(through haproxy\): (http:\/\/127\.0\.0\.1:\d+\/)$/))) cluster.web = m[1];
      if ((m = line.match(/node (\S+): public http:\/\/(\S+)\/\s+admin http:\/\/(\S+)\/admin\/status\s+pid (\d+)$/))) {
        cluster.nodes.push({ name: m[1], public: m[2], admin: m[3], pid: Number(m[4]) });
      }
      if (line.startsWith("Drain a node:")) break;
    }
  } finally {
    clearTimeout(timer);
  }
  lines.on("line", () => {});
  if (!cluster.web || cluster.nodes.length !== 2) {
    await stopCluster(cluster);
    throw new Error(`chat-local-cluster did not print its addresses:\n${cluster.logs.join("\n")}`);
  }
  // Every process it started (redis-server, the nodes, haproxy), to check they are gone.
  cluster.pids = childrenOf(child.pid);
  for (const n of cluster.nodes) assert.ok(cluster.pids.includes(n.pid), `node ${n.name} is a child`);
  return cluster;
}

/** SIGTERM (it stops everything it started), SIGKILL by PID after 15 s. */
async function stopCluster(cluster) {
  const { child } = cluster;
  if (!cluster.exited) {
    child.kill("SIGTERM");
    try {
      await until("chat-local-cluster to exit on SIGTERM", () => cluster.exited, 15_000);
    } catch (e) {
      child.kill("SIGKILL");
      for (const pid of cluster.pids) { try { process.kill(pid, "SIGKILL"); } catch { /* gone */ } }
      throw e;
    }
  }
  await until("every cluster process to be gone", () => cluster.pids.every((p) => !alive(p)), 5_000);
}

async function adminStatus(node) {
  const res = await fetch(`http://${node.admin}/admin/status`);
  assert.equal(res.status, 200);
  return res.json();
}

const logHas = (page, text) => page.waitForFunction(
  (t) => document.getElementById("log").textContent.includes(t), text, { timeout: WAIT, polling: 50 });
const logLines = (page) => page.$$eval("#log div", (ds) => ds.map((d) => d.textContent));
const statusMatches = async (page, re) => {
  await page.waitForFunction((src) => new RegExp(src).test(document.getElementById("status").textContent),
    re.source, { timeout: WAIT, polling: 50 });
  return (await page.textContent("#status")).match(re);
};
async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

test("two tabs chat through a two-node cluster; a drained tab resumes on the other node without loss or duplicates",
  { timeout: 120_000 }, async () => {
    const cluster = await startCluster();
    let browser;
    try {
      browser = await launchChromium();
      const byName = (name) => cluster.nodes.find((n) => n.name === name);

      // Tab A: the first visit gets its node from haproxy (round robin) and the cookie.
      // The clock is faked in A's profile only (so it can hold A's reconnect timer
      // later); it runs in real time until paused.
      const ctxA = await browser.newContext();
      await ctxA.clock.install();
      const a = await ctxA.newPage();
      await a.goto(cluster.web);
      await a.fill("#user", "alice");
      await a.click("#connect");
      await a.waitForSelector("#text:not([disabled])", { timeout: WAIT });
      const nodeA = byName((await statusMatches(a, /^connected as alice on (\S+)$/))[1]);
      assert.ok(nodeA, "the welcome frame names one of the cluster's nodes");
      const cookieOf = async (ctx) => (await ctx.cookies(cluster.web)).find((c) => c.name === "CHATNODE")?.value;
      assert.equal(await cookieOf(ctxA), nodeA.name, "haproxy's CHATNODE cookie names the node A is on");
      const nodeB = cluster.nodes.find((n) => n !== nodeA);

      // Tab B: a separate profile, pinned to the other node by its cookie.
      const ctxB = await browser.newContext();
      await ctxB.addCookies([{ name: "CHATNODE", value: nodeB.name, url: cluster.web }]);
      const b = await ctxB.newPage();
      await b.goto(cluster.web);
      await b.fill("#user", "bob");
      await b.click("#connect");
      await b.waitForSelector("#text:not([disabled])", { timeout: WAIT });
      await statusMatches(b, new RegExp(`^connected as bob on ${nodeB.name}$`));
      assert.equal((await adminStatus(nodeA)).connections, 1, "A's node has A's connection");
      assert.equal((await adminStatus(nodeB)).connections, 1, "the other node has B's connection");

      // Chat both ways, presence and a direct message, across the two nodes.
      await logHas(a, "bob joined");
      await say(a, "hello from tab A");
      await logHas(b, "alice: hello from tab A");
      await say(b, "before the drain");
      await logHas(a, "bob: before the drain");
      await say(b, "/dm alice psst");
      await logHas(a, "[dm] bob → alice: psst");
      assert.match(await a.textContent("#members"), /alice.*bob|bob.*alice/s);
      assert.equal(await a.textContent("#count"), "(2)", "the member count the server sent");

      // Drain A's node, with A's timers paused: the page gets the notice and the 1012
      // close, and schedules its reconnect on the (held) clock.
      await a.clock.pauseAt(Date.now() + 1_000);
      const res = await fetch(`http://${nodeA.admin}/admin/drain`, { method: "POST" });
      assert.equal(res.status, 202);
      await logHas(a, "server is restarting; reconnecting…");
      const wait = Number((await statusMatches(a, /^reconnecting in (\d+) ms$/))[1]);
      assert.equal((await adminStatus(nodeB)).connections, 1, "A is not connected anywhere during the gap");

      // B sends while A is disconnected; it is published (B receives it) but A lacks it.
      await say(b, "sent during the gap");
      await logHas(b, "bob: sent during the gap");
      assert.ok(!(await logLines(a)).includes("bob: sent during the gap"), "A cannot have it yet");
      assert.match(await a.textContent("#status"), /^reconnecting in/, "A is still waiting to reconnect");

      // Let A's reconnect timer fire: A lands on the other node and resumes the room.
      await a.clock.runFor(wait + 1);
      await a.clock.resume();
      await statusMatches(a, new RegExp(`^connected as alice on ${nodeB.name}$`));
      await a.waitForSelector("#text:not([disabled])", { timeout: WAIT });
      await logHas(a, "bob: sent during the gap");
      await until("both tabs on the other node", async () => (await adminStatus(nodeB)).connections === 2);
      // haproxy redispatched A (its cookie named the drained node) and rewrote the cookie
      // on the upgrade response, so A's next visit sticks to its new node.
      assert.equal(await cookieOf(ctxA), nodeB.name, "CHATNODE now names A's new node");
      await say(b, "after the reconnect");
      await logHas(a, "bob: after the reconnect");
      await say(a, "back from tab A");
      await logHas(b, "alice: back from tab A");
      // A's own copy may come a moment after B's: wait for it before reading A's log.
      await logHas(a, "alice: back from tab A");
      assert.match(await a.textContent("#members"), /alice.*bob|bob.*alice/s);

      // A's log: before, during and after the drain exactly once each, in order, with the
      // resumed join (recovered) between the notice and the replayed message.
      const log = await logLines(a);
      const once = (t) => {
        const at = log.map((l, i) => (l === t ? i : -1)).filter((i) => i >= 0);
        assert.equal(at.length, 1, `"${t}" appears once in A's log:\n${log.join("\n")}`);
        return at[0];
      };
      const before = once("bob: before the drain");
      const notice = once("server is restarting; reconnecting…");
      const during = once("bob: sent during the gap");
      const after = once("bob: after the reconnect");
      assert.ok(before < notice && notice < during && during < after, `order in A's log:\n${log.join("\n")}`);
      const rejoined = log.indexOf("joined lobby", notice);
      assert.ok(rejoined > notice && rejoined < during, `A rejoined with recovered: true before the replay:\n${log.join("\n")}`);
      assert.ok(!log.some((l) => l.includes("could not be recovered")), "nothing reported lost");
      const chat = log.filter((l) => /^(alice|bob): /.test(l));
      assert.deepEqual(chat, ["alice: hello from tab A", "bob: before the drain", "bob: sent during the gap",
        "bob: after the reconnect", "alice: back from tab A"], "A's room messages, each once, in order");

      // The drained node finished its drain and exited 0. chat-local-cluster reaps its
      // nodes only when it stops, so the node is a zombie whose exit status is readable.
      const exited = await until(`node ${nodeA.name} to exit`, () => {
        const s = procState(nodeA.pid);
        assert.ok(s, `node ${nodeA.name} (pid ${nodeA.pid}) is still a child of chat-local-cluster`);
        return s.state === "Z" && s;
      });
      assert.equal(exited.exitCode, 0, "the drained node exits with status 0");
      assert.ok(cluster.logs.some((l) => l.includes("drain complete: no connection left")),
        "the drained node finished by itself, not at the deadline");
      assert.ok(!cluster.logs.some((l) => l.includes("drain deadline passed")), "no connection was force-closed");
    } finally {
      await browser?.close();
      await stopCluster(cluster);
    }
  });
