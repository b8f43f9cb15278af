#!/usr/bin/env bash
# Start a Docker engine if none answers, and wait until it does.
# Used by `make demo`, `make test` and .ci/run on machines without systemd.
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "ensure-docker: dockerd is not installed (apt-get install -y docker.io)" >&2
  exit 1
fi
log=${DOCKERD_LOG:-/var/log/dockerd.log}
# setsid: the engine must outlive the shell that started it.
setsid dockerd >"$log" 2>&1 < /dev/null &
for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then exit 0; fi
  sleep 0.5
done
echo "ensure-docker: dockerd did not answer within 60 s; last lines of $log:" >&2
tail -n 20 "$log" >&2
exit 1
