#!/usr/bin/env bash
# Installs the real Kafka clients the broker tests drive: Debian's kcat and
# confluent-kafka from PyPI. Idempotent and quick when both are present; runs
# unattended (CI=true, no stdin). Needs root (or sudo) for apt-get.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
fi

PYTHON=${PYTHON:-python3}

if ! command -v kcat >/dev/null 2>&1; then
    echo "install-test-deps: installing kcat (apt)" >&2
    $SUDO apt-get update -qq </dev/null
    $SUDO apt-get install -y -qq kcat </dev/null >/dev/null
fi
command -v kcat >/dev/null 2>&1 || { echo "install-test-deps: kcat still missing" >&2; exit 1; }

if ! "$PYTHON" -c 'import confluent_kafka' >/dev/null 2>&1; then
    echo "install-test-deps: installing confluent-kafka (pip)" >&2
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-input confluent-kafka </dev/null
fi
"$PYTHON" -c 'import confluent_kafka; print("install-test-deps: kcat", end=" "); import sys; print("+ confluent-kafka", confluent_kafka.version()[0], "librdkafka", confluent_kafka.libversion()[0])'
