#!/usr/bin/env bash
# `make demo`: on a Debian 12 machine with no registry, deploy the FlashFit stack (server + nginx)
# with a blue-green deploy, then show a working recommend call. The Makefile has already made
# the venv and started Docker (scripts/setup-host.sh).
#
# demo/ is git-ignored and written on the first run: demo/flashfit.yml, demo/.env (mode 0600),
# tiny model checkpoints in demo/models, the catalogue in demo/data. Every flashfit command works
# on it afterwards with `-c demo/flashfit.yml`; running this again deploys again, with zero downtime.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin
CONFIG=demo/flashfit.yml
mkdir -p demo

if [[ ! -f $CONFIG ]]; then
  cat > "$CONFIG" <<'YAML'
# The offline demo: images built from Debian packages, tiny model checkpoints, port 8088.
project: flashfit-demo
server:
  image: flashfit/backend
  build:
    base_image: flashfit/debian-python:bookworm
    context: ..
    wheelhouse: ../.wheelhouse
  environment:
    ENVIRONMENT: production
    LOG_FORMAT: json
ports:
  http: 8088
resources:
  limits: {memory: 4G, cpus: 2}
  reservations: {memory: 512M, cpus: 0.5}
healthcheck:
  interval: 500ms
  start_period: 60s
deploy:
  strategy: blue-green
  drain_timeout: 5s
  monitor_window: 5s
rate_limit:
  requests_per_second: 50
  burst: 100
services:
  nginx:
    image: flashfit/nginx:bookworm
  prometheus: {enabled: false}
  grafana: {enabled: false}
volumes:
  models: ./models
  data: ./data
backup:
  target: file://./backups
YAML
  echo "demo: wrote $CONFIG"
fi

if [[ ! -f demo/.env ]]; then
  (umask 077 && printf 'JWT_SECRET_KEY=%s\nSECRET_KEY=%s\n' "$(openssl rand -hex 32)" "$(openssl rand -hex 32)" > demo/.env)
  echo "demo: wrote demo/.env (mode 0600) with fresh secrets"
fi

"$BIN/flashfit" config validate -c "$CONFIG"
"$BIN/flashfit" images bootstrap -c "$CONFIG"

if [[ ! -d demo/models/openai ]]; then
  "$BIN/flashfit-server" models make-tiny demo/models
fi
# The server runs as uid 1000 in its container: it reads the models and owns its data.
chmod -R a+rX demo/models
mkdir -p demo/data && chown -R 1000:1000 demo/data

"$BIN/flashfit" deploy --strategy blue-green -c "$CONFIG" -m "make demo"

URL=http://127.0.0.1:8088
set -a; . demo/.env; set +a
TOKEN=$("$BIN/flashfit-server" token --subject demo)
unset JWT_SECRET_KEY SECRET_KEY

count=$(curl -fsS "$URL/api/items?limit=1" | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin).get("total", 0))')
if [[ $count == 0 ]]; then
  echo "demo: adding a small catalogue"
  "$BIN/python" - "$URL" "$TOKEN" <<'PY'
import io, sys
import httpx
from PIL import Image

url, token = sys.argv[1], sys.argv[2]
items = [("red summer dress", "dress", (200, 30, 40)), ("navy blazer", "jacket", (20, 30, 90)),
         ("white sneakers", "shoes", (240, 240, 235)), ("olive chinos", "trousers", (110, 120, 60)),
         ("black leather boots", "shoes", (20, 20, 20)), ("yellow raincoat", "jacket", (230, 200, 40))]
with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
    for name, category, rgb in items:
        buffer = io.BytesIO()
        Image.new("RGB", (96, 96), rgb).save(buffer, format="PNG")
        response = client.post("/api/items", files={"image": ("item.png", buffer.getvalue(), "image/png")},
                               data={"name": name, "category": category, "tags": category})
        response.raise_for_status()
PY
fi

echo
echo "FlashFit is serving at $URL (blue-green, behind nginx)."
echo "Try:"
echo "  curl -s $URL/ready"
echo "  curl -s -X POST $URL/api/fusion/recommend -H 'Content-Type: application/json' -d '{\"text\": \"a jacket for rain\", \"limit\": 3}'"
echo
curl -fsS -X POST "$URL/api/fusion/recommend" -H 'Content-Type: application/json' -d '{"text": "a jacket for rain", "limit": 3}' \
  | "$BIN/python" -c '
import json, sys
for item in json.load(sys.stdin)["recommendations"]:
    print("  %.3f  %s" % (item["scores"]["fusion_score"], item["name"]))'
echo
echo "Everything else works on the demo with -c $CONFIG, e.g. flashfit status -c $CONFIG"
