#!/usr/bin/env bash
# Create the bucket and two scoped users (scheduler side, workers) on MinIO with `mc`.
#   MC_HOST_edge=http://edge-admin:PASSWORD@minio:9000 infra/minio-setup.sh airflow-edge
set -euo pipefail
bucket=${1:-airflow-edge}
here=$(dirname "$0")
mc mb --ignore-existing "edge/$bucket"
for side in scheduler worker; do
  sed "s/BUCKET/$bucket/g" "$here/iam-$side-policy.json" > "/tmp/edge-mailbox-$side.json"
  mc admin policy create edge "edge-mailbox-$side" "/tmp/edge-mailbox-$side.json"
  secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  mc admin user add edge "edge-mailbox-$side" "$secret"
  mc admin policy attach edge "edge-mailbox-$side" --user "edge-mailbox-$side"
  echo "$side: access key edge-mailbox-$side, secret $secret"
done
