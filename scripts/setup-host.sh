#!/usr/bin/env bash
# Install and start what flashfit's tests and demo need on a Debian 12 host, then check each
# component is really there. Safe to run again: it installs only what is missing.
set -euo pipefail

packages=(docker.io docker-compose nginx prometheus debootstrap openssl util-linux ca-certificates)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup-host: missing packages ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "setup-host: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${missing[@]}" >/dev/null
fi

# The nginx and prometheus packages start daemons on ports 80 and 9090 where systemd exists;
# flashfit only needs their binaries (nginx -t, promtool), so keep those ports free.
for unit in nginx prometheus; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$unit" 2>/dev/null; then
    systemctl stop "$unit" || true
  fi
done

"$(dirname "$0")/ensure-docker.sh"

status=0
for tool in docker dockerd docker-compose nginx promtool debootstrap openssl unshare; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "setup-host: $tool is missing after installation" >&2
    status=1
  fi
done
docker info >/dev/null 2>&1 || { echo "setup-host: the Docker engine does not answer" >&2; status=1; }
exit $status
