// A chat-server process for the browser tests (not a test file itself: `node --test` runs
// only `*.test.js`): started on ephemeral loopback ports, stopped by PID.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";

const SERVER_BIN = process.env.CHAT_SERVER_BIN
  ?? new URL("../../target/debug/chat-server", import.meta.url).pathname;

/** Starts chat-server on ephemeral loopback ports with `env` (and `args`) added;
 *  resolves with its process, its log lines and its addresses. */
export async function startServer(env, args = []) {
  const child = spawn(SERVER_BIN, ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
    "--log-format", "json", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, ...env },
  });
  const logs = [];
  createInterface({ input: child.stderr }).on("line", (l) => logs.push(l));
  const lines = createInterface({ input: child.stdout });
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  try {
    for await (const line of lines) {
      logs.push(line);
      let v;
      try { v = JSON.parse(line); } catch { continue; }
      if (v.message === "chat server listening") {
        lines.on("line", (l) => logs.push(l));
        return { child, logs, public: v.public_addr, admin: v.admin_addr };
      }
    }
  } finally {
    clearTimeout(timer);
  }
  throw new Error(`chat-server did not start:\n${logs.join("\n")}`);
}

/** SIGTERM, then SIGKILL by PID after 10 s; resolves once it has exited. */
export async function stopServer(server) {
  if (server.child.exitCode !== null) return;
  const exited = new Promise((r) => server.child.once("exit", r));
  server.child.kill("SIGTERM");
  const timer = setTimeout(() => server.child.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}
