"""Backups of the FlashFit data and deployment configuration, restic/kopia style.

A backup target (a local folder or an S3 bucket/prefix) holds:
  blobs/<sha[:2]>/<sha>[.zst]   file contents, named by the SHA-256 of the content, written once
  snapshots/<id>.json           one manifest per backup, written LAST: no manifest, no backup
  locks/<kind>-<id>.json        a backup or prune in progress (prune never runs beside a backup)

Modules: api (the one entry the CLI calls: it picks the store, snapshotter, key and policy, and
restores around the deployed stack or around nothing), paths (path safety), manifest (format),
retention (policy as data), blobs (hashing, compression, encryption), store (local/S3), location
(the data folder), snapshot (the server's snapshot endpoint), service (stop/start seam around a
restore), deployed (the snapshot through, and the stop/start of, a stack `flashfit deploy` runs:
built on flashfit_ops.execute). The jobs, one module each: lock (the lock in the target),
catalogue (ids, manifests, listing), upload + create, verify, prune, and restore, which runs
staging (download and verify) -> swap (with the service) -> apply_config. common holds what the
jobs share; engine re-exports the jobs under their former import path.
Nothing here prints: progress goes through callbacks the caller supplies.
"""
