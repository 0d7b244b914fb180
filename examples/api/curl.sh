#!/usr/bin/env bash
# The server API with curl: publish a system message, read the room's last messages,
# then disconnect a user everywhere. CHAT_API and CHAT_API_KEY as for backend.py.
set -euo pipefail
api() { curl -sS --fail-with-body -H "Authorization: Bearer $CHAT_API_KEY" -d "$2" "$CHAT_API/api/v1/$1"; echo; }
api publish '{"room": "lobby", "body": "Maintenance at noon", "idempotency_key": "maint-1"}'
api history '{"room": "lobby", "limit": 10}'
api disconnect '{"user": "mallory", "code": 4403, "reason": "banned"}'
