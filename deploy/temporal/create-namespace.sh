#!/bin/sh
# One-shot job run in the temporalio/admin-tools image once the server answers: registers the
# namespace taskomatic uses (the plain temporalio/server image, unlike the old auto-setup image,
# creates none), then waits until the namespace is visible through the operator API, so the
# worker's own search-attribute registration does not race the server's namespace cache.
set -eu

: "${TEMPORAL_ADDRESS:=temporal:7233}"
: "${NAMESPACE:=default}"
: "${NAMESPACE_RETENTION:=72h}"

retry() {
  what="$1"
  shift
  tries=0
  until "$@" >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
      echo "gave up waiting for: ${what}" >&2
      "$@" || true
      exit 1
    fi
    echo "waiting for: ${what}"
    sleep 2
  done
}

retry "Temporal at ${TEMPORAL_ADDRESS} to report SERVING" \
  temporal operator cluster health --address "$TEMPORAL_ADDRESS"

if temporal operator namespace describe --address "$TEMPORAL_ADDRESS" -n "$NAMESPACE" >/dev/null 2>&1; then
  echo "namespace ${NAMESPACE} already exists"
else
  echo "creating namespace ${NAMESPACE} (retention ${NAMESPACE_RETENTION})"
  temporal operator namespace create --address "$TEMPORAL_ADDRESS" -n "$NAMESPACE" \
    --retention "$NAMESPACE_RETENTION"
fi

retry "namespace ${NAMESPACE} to be served" \
  temporal operator search-attribute list --address "$TEMPORAL_ADDRESS" -n "$NAMESPACE"
echo "namespace ${NAMESPACE} is ready"
