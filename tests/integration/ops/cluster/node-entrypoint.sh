#!/bin/sh
# Make the nested engine able to run containers without --privileged (the host refuses it):
# /sys and the cgroup tree come in read-only, /tmp must be a real tmpfs.
set -eu
mount -o remount,rw /sys 2>/dev/null || true
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    # cgroup v2: move this shell out of the root group so controllers can be delegated below it.
    mount -o remount,rw /sys/fs/cgroup
    mkdir -p /sys/fs/cgroup/init
    for pid in $(cat /sys/fs/cgroup/cgroup.procs); do echo "$pid" > /sys/fs/cgroup/init/cgroup.procs 2>/dev/null || true; done
    sed -e 's/ / +/g' -e 's/^/+/' < /sys/fs/cgroup/cgroup.controllers > /sys/fs/cgroup/cgroup.subtree_control || true
else
    for controller in /sys/fs/cgroup/*; do mount -o remount,bind,rw "$controller" "$controller" 2>/dev/null || true; done
fi
mount -t tmpfs tmpfs /tmp
# A node stopped and started again (node-loss tests) keeps its root filesystem: stale pid files
# from the last run would stop dockerd and containerd from starting.
rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
# The host pushes to the registry at 127.0.0.1:PORT; the same name must work here, so image
# references (digests included) are identical on the host and on every node.
# The registry's address, not its name: socat resolves a name for every connection, and an
# embedded-DNS answer lost on a loaded host closed the connection at once ("EOF" in CI).
if [ -n "${REGISTRY_LOOPBACK_PORT:-}" ]; then
    socat "TCP-LISTEN:${REGISTRY_LOOPBACK_PORT},bind=127.0.0.1,fork,reuseaddr" "TCP:${REGISTRY_ADDRESS:-registry:5000}" &
fi
exec dockerd --host unix:///var/run/docker.sock --host tcp://0.0.0.0:2375 --tls=false \
    --storage-driver overlay2 "$@"
