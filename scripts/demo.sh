#!/usr/bin/env bash
# `make demo`: the offline demo. Writes demo/flashfit.yml on the first run (git-ignored), so every
# other command works on it afterwards with `-c demo/flashfit.yml`.
set -euo pipefail
cd "$(dirname "$0")/.."
FLASHFIT=.venv/bin/flashfit
mkdir -p demo
if [[ ! -f demo/flashfit.yml ]]; then
  $FLASHFIT init demo/flashfit.yml
fi
$FLASHFIT config validate -c demo/flashfit.yml
$FLASHFIT render -c demo/flashfit.yml --env prod --out demo/deploy
echo "demo: rendered the deployment into demo/deploy"
