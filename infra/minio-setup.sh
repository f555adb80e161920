#!/usr/bin/env bash
# Create the bucket and two scoped users (scheduler side, workers) on MinIO with `mc`:
#   MC_HOST_edge=http://edge-admin:PASSWORD@minio:9000 infra/minio-setup.sh [BUCKET [PREFIX [DIR]]]
# (defaults: airflow-edge, edge-mailbox, the current folder). Each user's credentials are
# written to DIR/edge-mailbox-{scheduler,worker}.env, mode 0600, as AWS_ACCESS_KEY_ID= and
# AWS_SECRET_ACCESS_KEY= lines (a systemd EnvironmentFile); no secret is printed or passed on
# a command line. An existing file is never overwritten: remove it to issue a new secret.
set -euo pipefail
bucket=${1:-airflow-edge}
prefix=${2:-edge-mailbox}
out=${3:-.}
here=$(dirname "$0")
if [[ ! $bucket =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]]; then
  echo "invalid bucket name: $bucket" >&2
  exit 2
fi
if [[ ! $prefix =~ ^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$ ]]; then
  echo "invalid prefix (letters, digits, _ . - and inner slashes): $prefix" >&2
  exit 2
fi
for side in scheduler worker; do
  if [[ -e "$out/edge-mailbox-$side.env" ]]; then
    echo "$out/edge-mailbox-$side.env exists: remove it to issue a new secret" >&2
    exit 1
  fi
done

umask 077
policy=$(mktemp)
trap 'rm -f "$policy"' EXIT
trap 'exit 130' INT TERM HUP

mc mb --ignore-existing "edge/$bucket"
for side in scheduler worker; do
  user=edge-mailbox-$side
  sed -e "s|edge-mailbox/v1/|$prefix/v1/|g" -e "s|BUCKET|$bucket|g" \
    "$here/iam-$side-policy.json" >"$policy"
  mc admin policy create edge "$user" "$policy"
  secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  printf '%s\n' "$secret" | mc admin user add edge "$user" >/dev/null  # the secret on stdin
  if ! attached=$(mc admin policy attach edge "$user" --user "$user" 2>&1); then
    grep -q "already in effect" <<<"$attached" || { echo "$attached" >&2; exit 1; }
  fi
  (set -o noclobber; printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' \
    "$user" "$secret" >"$out/$user.env")
  echo "$side: user $user, credentials written to $out/$user.env (mode 0600)"
done
