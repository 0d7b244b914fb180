"use strict";
// Minimal client for protocol v1 (docs/protocol.md): join with resume, send with ack,
// direct messages, presence, and reconnect on drain notices without losing messages.
// Tokens: with `?token_url=URL` on this page the client fetches its JWT from URL (GET,
// with cookies; the body is the token) and sends `refresh` before the token expires; a
// session closed for an expired token (4003) fetches a new one and reconnects. Without
// it, the token field is used, and after a 4003 the client reconnects only once a new
// token has been pasted there.
const $ = (id) => document.getElementById(id);
const state = { ws: null, room: null, pos: null, members: new Set(), memberCount: 0, retry: 0, wanted: false, ref: 0,
  token: null, refreshTimer: null };
const tokenUrl = sameOrigin(new URLSearchParams(location.search).get("token_url"));
$("user").value = "guest" + Math.floor(Math.random() * 1000);

/** `token_url` only on this page's own origin: a link must not make the page send its
 *  cookies, or fetch a token, from elsewhere (the page's CSP refuses other origins too). */
function sameOrigin(u) {
  if (!u) return null;
  try {
    const url = new URL(u, location.href);
    if (url.origin === location.origin) return url.href;
  } catch (e) { /* not a URL */ }
  setTimeout(() => line("token_url ignored: it must be on this page's origin", "err"));
  return null;
}
function line(text, cls) {
  const d = document.createElement("div");
  d.textContent = text;
  if (cls) d.className = cls;
  $("log").appendChild(d);
  $("log").scrollTop = $("log").scrollHeight;
}
function setStatus(s) { $("status").textContent = s; }
function renderMembers() {
  const ul = $("members"); ul.textContent = "";
  [...state.members].sort().forEach((m) => { const li = document.createElement("li"); li.textContent = m; ul.appendChild(li); });
  // A big room lists its first page only (and above the server's presence limit, counts).
  const more = state.memberCount - state.members.size;
  if (more > 0) { const li = document.createElement("li"); li.textContent = "… and " + more + " more"; ul.appendChild(li); }
  $("count").textContent = "(" + state.memberCount + ")";
}
async function fetchToken() {
  const r = await fetch(tokenUrl, { credentials: "include" });
  if (!r.ok) throw new Error("token_url answered " + r.status);
  const token = (await r.text()).trim();
  $("token").value = token;
  return token;
}
/** Sends `refresh` with a new token some time before `exp` (Unix seconds). */
function scheduleRefresh(exp) {
  clearTimeout(state.refreshTimer);
  if (!tokenUrl || !exp) return;
  const left = exp * 1000 - Date.now();
  const delay = Math.max(1000, left - Math.min(30000, left / 2));
  const ws = state.ws;
  state.refreshTimer = setTimeout(async () => {
    if (state.ws !== ws || ws.readyState !== WebSocket.OPEN) return;
    try { ws.send(JSON.stringify({ type: "refresh", token: await fetchToken() })); }
    catch (e) { line("could not refresh the token: " + e.message, "err"); }
  }, delay);
}
async function connect() {
  const user = $("user").value.trim();
  let token = $("token").value.trim();
  if (tokenUrl && !token) {
    try { token = await fetchToken(); }
    catch (e) { setStatus("no token: " + e.message); return; }
  }
  const room = $("room").value.trim() || "lobby";
  if (state.room !== room) { state.room = room; state.pos = null; $("log").textContent = ""; }
  state.wanted = true;
  state.token = token || null;
  // A token goes in the first frame, never in the URL (URLs end up in access logs).
  const q = token ? "" : "?user=" + encodeURIComponent(user);
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws" + q);
  state.ws = ws;
  setStatus("connecting…");
  ws.onopen = () => {
    state.retry = 0;
    if (token) ws.send(JSON.stringify({ type: "auth", token }));
    ws.send(JSON.stringify(state.pos ? { type: "join", room, since: state.pos } : { type: "join", room }));
  };
  // After a resync request nothing more is read from this connection: it is past a gap.
  ws.onmessage = (ev) => { if (!ws.resyncing) handle(JSON.parse(ev.data), ws); };
  ws.onclose = (ev) => {
    $("text").disabled = $("sendbtn").disabled = true;
    if (state.ws !== ws) return;
    clearTimeout(state.refreshTimer);
    if (ev.code === 4003) {
      // Token expired: reconnect with a new one (fetched, or pasted since).
      if (tokenUrl) $("token").value = "";
      else if ($("token").value.trim() === state.token) {
        setStatus("token expired: paste a new token, then Connect");
        return;
      }
    }
    const reconnect = [1001, 1006, 1011, 1012, 1013].includes(ev.code) || (ev.code >= 4000 && ev.code < 4100);
    if (!state.wanted || !reconnect) { setStatus("disconnected (" + ev.code + (ev.reason ? ": " + ev.reason : "") + ")"); return; }
    const wait = state.afterMs != null ? state.afterMs : Math.min(10000, 250 * 2 ** state.retry++) * (0.5 + Math.random());
    state.afterMs = null;
    setStatus("reconnecting in " + Math.round(wait) + " ms");
    setTimeout(() => { if (state.wanted) connect(); }, wait);
  };
}
function handle(f, ws) {
  switch (f.type) {
    case "welcome": setStatus("connected as " + f.user + " on " + f.node); scheduleRefresh(f.token_exp); break;
    case "refreshed": scheduleRefresh(f.exp); break;
    case "joined":
      state.pos = { epoch: f.epoch, offset: f.offset };
      state.members = new Set(f.members); state.memberCount = f.member_count; renderMembers();
      line(f.recovered ? "joined " + f.room : "joined " + f.room + " (earlier messages could not be recovered)", "sys");
      $("text").disabled = $("sendbtn").disabled = false; $("text").focus();
      break;
    case "message":
      if (f.room === state.room) state.pos = { epoch: f.epoch, offset: f.offset };
      line(f.from + ": " + f.body);
      break;
    case "dm": line("[dm] " + f.from + " → " + f.to + ": " + f.body, "dm"); break;
    case "presence":
      f.joined.forEach((u) => { if (!state.members.has(u)) line(u + " joined", "sys"); state.members.add(u); });
      f.left.forEach((u) => { state.members.delete(u); line(u + " left", "sys"); });
      state.memberCount = f.member_count;
      renderMembers();
      break;
    case "error":
      line("error " + f.code + ": " + f.message, "err");
      if (f.code === "unavailable" && !f.ref) {
        // The server could not fill a gap in live traffic: what follows is past it.
        // Reconnect and rejoin from the last message shown, so the replay fills it.
        ws.resyncing = true;
        state.afterMs = 100;
        ws.close(4000, "resync");
      }
      break;
    case "left": line("left " + f.room, "sys"); $("text").disabled = $("sendbtn").disabled = f.room === state.room; break;
    case "reconnect": state.afterMs = f.after_ms; line("server is restarting; reconnecting…", "sys"); break;
  }
}
$("connect").onclick = () => { if (state.ws) { state.wanted = false; state.ws.close(1000); } connect(); };
$("send").onsubmit = (e) => {
  e.preventDefault();
  const text = $("text").value; if (!text || !state.ws) return;
  const m = text.match(/^\/dm\s+(\S+)\s+(.+)$/);
  const ref = String(++state.ref);
  state.ws.send(JSON.stringify(m ? { type: "dm", to: m[1], body: m[2], ref } : { type: "send", room: state.room, body: text, ref }));
  if (m) line("[dm] you → " + m[1] + ": " + m[2], "dm");
  $("text").value = "";
};
