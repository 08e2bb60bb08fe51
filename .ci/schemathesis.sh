#!/usr/bin/env bash
# Schemathesis against a live `serve-can --memory`: it generates requests
# from docs/openapi.json (valid and invalid ones) and fails on any 5xx
# answer (not_a_server_error) or any answer outside the document
# (response_schema_conformance). Bounded: a few examples per route, the
# whole run under SCHEMATHESIS_MAX_SECS (default 180).
#
# schemathesis is installed into a venv under target/ (once; PyPI);
# .ci/schemathesis_hooks.py teaches it to send protobuf bodies.
# `GET /sync/events` is left out: its answer is a stream that never ends
# while the client stays, which a request-per-example fuzzer cannot read.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/schemathesis-venv
MAX_SECS="${SCHEMATHESIS_MAX_SECS:-180}"
if [ ! -x "$VENV/bin/schemathesis" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
fi

VENV_BIN="$PWD/$VENV/bin"
BIN=target/debug/can-sync
cargo build --quiet --bin can-sync

# The server prints `listening http://ADDR` once it accepts: read that line
# from its stdout (no polling), and stop it whatever happens next.
coproc SERVER { exec "$BIN" serve-can --memory --listen 127.0.0.1:0; }
SERVER_PID=$SERVER_PID
trap 'kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true' EXIT
if ! read -r -t 30 -u "${SERVER[0]}" LINE; then
    echo "serve-can did not start within 30 s" >&2
    exit 1
fi
URL="${LINE#listening }"
echo "schemathesis against $URL"

# One asset the document's example hash names, so the routes of one asset
# answer 200 (and their JSON is checked against its schema), not only 404.
python3 - "$URL" <<'PY'
import json, sys, urllib.request
url = sys.argv[1]
request = urllib.request.Request(
    url + "/assets",
    data=b"<p>seeded by .ci/schemathesis.sh</p>\n",
    method="POST",
    headers={"Content-Type": "text/html", "x-asset-mime": "text/html",
             "x-asset-name": "seed.html", "x-asset-tags": "seed"},
)
stored = json.load(urllib.request.urlopen(request, timeout=10))
with open("docs/openapi.json") as doc:
    examples = {p.get("example") for item in json.load(doc)["paths"].values()
                for op in item.values() for p in op.get("parameters", [])
                if p["name"] == "hash"}
if examples != {stored["hash"]}:
    sys.exit(f"the document's example hash {examples} is not the seeded asset {stored['hash']}")
PY

# Run from target/: schemathesis keeps a cache (.schemathesis/) in its
# working folder, which belongs there, not in the source tree.
cd target
SCHEMATHESIS_HOOKS=../.ci/schemathesis_hooks.py \
    timeout "$MAX_SECS" "$VENV_BIN/schemathesis" run ../docs/openapi.json \
    --url "$URL" \
    --checks not_a_server_error,response_schema_conformance \
    --exclude-path /sync/events \
    --max-examples 25 \
    --request-timeout 10 \
    --seed 19 \
    --generation-database none \
    --no-color
