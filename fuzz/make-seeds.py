#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/ (committed; libFuzzer starts from
them, e2e/fuzz.sh copies them to a scratch corpus). Run from anywhere."""
import base64, hashlib, hmac, json, os, pathlib, time

ROOT = pathlib.Path(__file__).resolve().parent
SEEDS = ROOT / "seeds"
SECRET = b"fuzz-secret-fuzz-secret-fuzz-secret!"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims: dict) -> str:
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def write(target: str, seeds: list) -> None:
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        if not old.name.startswith("regression-"):
            old.unlink()
    for data in seeds:
        data = data if isinstance(data, bytes) else data.encode()
        (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


frames = [
    {"type": "join", "room": "lobby"},
    {"type": "join", "room": "lobby", "since": {"epoch": "9f1c2a7be0d44c13", "offset": 41}},
    {"type": "send", "room": "lobby", "body": "hello", "ref": "c7"},
    {"type": "dm", "to": "bob@example.com", "body": "psst", "ref": "c8"},
    {"type": "leave", "room": "lobby"},
    {"type": "ping"},
    {"type": "refresh", "token": "eyJhbGciOiJIUzI1NiJ9.e30.x"},
    {"type": "send", "room": "bad room", "body": ""},
]
write("client_frame", [json.dumps(f) for f in frames] + ["{", "[]", '{"type":7}'])

far = 4102444800  # 2100-01-01: the seeds stay valid
token = hs256({"sub": "alice", "exp": far, "iss": "https://issuer.example", "aud": "chat"})
other = hs256({"sub": "mallory", "exp": far, "iss": "https://issuer.example", "aud": "chat"})
granted = hs256({"sub": "alice", "exp": far, "iss": "https://issuer.example", "aud": "chat",
                 "rooms": ["team.*", "ops"]})
room_token = hs256({"sub": "alice", "exp": far, "iss": "https://issuer.example", "aud": "chat",
                    "room": "team.red"})
# The auth target's first byte: % 5 picks tokens (0, 1), an origin (2), a JWKS document
# (3) or forwarding headers (4); for tokens, / 5 % 3 picks the public key beside the
# HS256 secret (RS256, ES256, Ed25519).
jwks = json.dumps({"keys": [
    {"kty": "EC", "kid": "e1", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
     "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
    {"kty": "OKP", "kid": "d1", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
    {"kty": "oct", "kid": "s1", "k": "c2VjcmV0"},
    {"kty": "EC", "kid": "e2", "use": "enc", "crv": "P-256", "x": "AA", "y": "AA"}]}).encode()
write("auth", [b"\x00" + token.encode(), b"\x01" + other.encode(), b"\x00alice",
               b"\x00" + granted.encode(), b"\x01" + room_token.encode(),
               b"\x05" + token.encode(), b"\x0a" + token.encode(),
               b"\x02https://chat.example", b"\x03" + jwks, b"\x04" + bytes(range(64))])

# The rooms target reads its fields with `arbitrary`: each &str is length-prefixed
# except the last; these seeds are rule sets and names it can start mutating from.
rules = json.dumps([{"pattern": "lobby.*", "access": "public"},
                    {"pattern": "inbox.{user}", "access": "user", "presence": False},
                    {"pattern": "*", "access": "grant"}]).encode()
write("rooms", [rules + b"team.*inbox.alicealice", b"*a*b*c" * 4, bytes(range(96))])

write("config", [b"\x00" * 8, b"\x01\x0310s", b"\x02\x0e10.0.0.0/8,::1",
                 b'\x03{"reconnect_window_seconds": 5, "notice_delay_seconds": 2}'])

write("resume", [bytes(range(128))])
# Inputs that found bugs are kept by hand as regression-* files (write() leaves them):
# resume/regression-head-at-u64-max (`head + 1` overflowing in resume_decision) and
# client_frame/regression-long-error-detail (error messages quoting serde's detail in
# full, many times the frame's size).

# Small JSON specs that reach every section of the spec.
write("operator_validate", [b"\x00" + json.dumps(s).encode() for s in [
    {},
    {"replicas": 3, "drain": {"reconnectWindowSeconds": 10, "deadlineSeconds": 25, "preStopSeconds": 5,
                              "maxReconnectsPerSecond": 150}},
    {"autoscaling": {"engine": "keda", "minReplicas": 1, "maxReplicas": 5,
                     "prometheusUrl": "http://prometheus:9090"}},
    {"redis": {"external": {"secretName": "redis", "urlKey": "url"}}},
    {"expose": {"ingress": {"host": "chat.example.com", "className": "nginx"}},
     "limits": {"trustedProxies": ["10.0.0.0/8"], "connectionsPerSecondPerSource": 20}},
    {"monitoring": {"podMonitor": {"labels": {"release": "prometheus"}, "intervalSeconds": 15}},
     "networkPolicy": {"adminFromNamespaces": ["monitoring"]}},
]])

# api_request: the first byte % 11 picks the request type (see the target).
api_bodies = [
    (0, {"room": "lobby", "body": "hi", "from": "ann", "idempotency_key": "k-1"}),
    (1, {"rooms": ["a", "b"], "body": "all hands"}),
    (2, {"to": "~anon1", "body": "x"}),
    (3, {"user": "mallory", "code": 4403, "reason": "banned"}),
    (4, {"room": "lobby", "user": "mallory"}),
    (5, {"room": "lobby", "after": "bob"}),
    (6, {"room": "lobby", "after": 5.0, "limit": 10}),
    (7, {"after": "a", "limit": None}),
    (8, {"room": "lobby"}),
    (9, {"user": "ann"}),
    (10, {"kind": "disconnect", "code": 4400, "reason": ""}),
    (10, {"kind": "remove_from_room", "room": "lobby"}),
]
write("api_request", [bytes([k]) + json.dumps(v).encode() for k, v in api_bodies]
      + [b"\x00[\"lobby\",\"x\"]", b"\x06{\"room\":\"r\",\"after\":18446744073709551616}"])
