"""An application backend for ChatCluster in a few lines (Python 3, standard library only).

    CHAT_API=http://127.0.0.1:9091 CHAT_API_KEY=... CHAT_WEBHOOK_SECRET=... python3 backend.py serve 8000
    python3 backend.py publish lobby "Maintenance at noon"
    python3 backend.py disconnect mallory 4403 "banned"
"""
import hashlib, hmac, json, os, sys, urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

API = os.environ.get("CHAT_API", "http://127.0.0.1:9091")
KEY = os.environ.get("CHAT_API_KEY", "")
SECRET = os.environ.get("CHAT_WEBHOOK_SECRET", "").encode()


def call(endpoint, body):
    """One server API call; returns the JSON answer (raises on 4xx/5xx)."""
    req = urllib.request.Request(f"{API}/api/v1/{endpoint}", data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


def signed(body, header):
    """Whether X-Chat-Signature is the HMAC-SHA256 of the raw body under our secret."""
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header or "")


class Events(BaseHTTPRequestHandler):
    seen = set()  # event ids already handled: a retried event carries the same id

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not signed(body, self.headers.get("X-Chat-Signature")):
            self.send_response(401), self.end_headers()
            return
        event = json.loads(body)
        if event["id"] not in Events.seen:
            Events.seen.add(event["id"])
            # Store the message, or send a push notification for a dm.offline here.
            print(json.dumps({"handled": event["type"], "payload": event["payload"]}), flush=True)
        self.send_response(200), self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "serve":
        HTTPServer(("127.0.0.1", int(args[0])), Events).serve_forever()
    elif command == "publish":  # a system message, from "$app"
        print(json.dumps(call("publish", {"room": args[0], "body": args[1]})))
    elif command == "disconnect":  # every session of the user, on every pod
        print(json.dumps(call("disconnect", {"user": args[0], "code": int(args[1]), "reason": args[2]})))
