#!/usr/bin/env bash
# Installs the real Kafka clients the broker tests drive: Debian's kcat,
# confluent-kafka and kafka-python (pinned: its admin results change shape between
# releases) from PyPI, and KafkaJS from the npm registry (into
# tests/clients/node/node_modules, at the version package-lock.json pins); and
# prometheus-client from PyPI, whose parser checks the broker's /metrics page;
# fincore, which counts a file's cached pages; and libfuse3 with mfusepy, for the
# FUSE file systems whose writes fail on demand (tests/failfs/failfs.py) or sit
# in a volatile cache until a flush (tests/failfs/cachefs.py).
# Idempotent and quick when all are present; runs unattended (CI=true, no
# stdin). Needs root (or sudo) for apt-get.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# ldconfig lives in /sbin, which is not on every PATH.
export PATH="$PATH:/usr/sbin:/sbin"

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

# The TLS tests make their certificates with the openssl command.
if ! command -v openssl >/dev/null 2>&1; then
    echo "install-test-deps: installing openssl (apt)" >&2
    $SUDO apt-get update -qq </dev/null
    $SUDO apt-get install -y -qq openssl </dev/null >/dev/null
fi

# The segment tests count a file's cached pages with fincore (util-linux; a
# package of its own, util-linux-extra, on Debian 12 and later).
if ! command -v fincore >/dev/null 2>&1; then
    echo "install-test-deps: installing fincore (apt)" >&2
    $SUDO apt-get update -qq </dev/null
    $SUDO apt-get install -y -qq util-linux-extra </dev/null >/dev/null \
        || $SUDO apt-get install -y -qq util-linux </dev/null >/dev/null
fi
command -v fincore >/dev/null 2>&1 || { echo "install-test-deps: fincore still missing" >&2; exit 1; }

# Pinned, and checked when present: the tests compare exact transcripts of
# the clients' admin results, which change shape between releases.
if ! "$PYTHON" -c 'import importlib.metadata as m, confluent_kafka, prometheus_client, kafka; assert (m.version("confluent-kafka"), m.version("kafka-python"), m.version("prometheus-client")) == ("2.16.1", "3.0.12", "0.26.0")' >/dev/null 2>&1; then
    echo "install-test-deps: installing confluent-kafka, kafka-python and prometheus-client (pip)" >&2
    if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
        $SUDO apt-get update -qq </dev/null
        $SUDO apt-get install -y -qq python3-pip </dev/null >/dev/null
    fi
    PIP=("$PYTHON" -m pip install --quiet --disable-pip-version-check --no-input --root-user-action=ignore confluent-kafka==2.16.1 kafka-python==3.0.12 prometheus-client==0.26.0)
    # A Debian system Python refuses pip installs (PEP 668) unless told otherwise.
    "${PIP[@]}" </dev/null || "${PIP[@]}" --break-system-packages </dev/null
fi
# The write-back failure and power-cut tests mount tests/failfs/: libfuse3 (Debian's
# fuse3 package pulls the right one), mfusepy (pinned) and /dev/fuse.
# The list is read whole first: `grep -q` stops at the first match, and the
# writer's SIGPIPE would fail the pipeline under pipefail.
LIBS=$(ldconfig -p 2>/dev/null || true)
if ! grep 'libfuse3\.so' >/dev/null <<<"$LIBS"; then
    echo "install-test-deps: installing libfuse3 (apt)" >&2
    $SUDO apt-get update -qq </dev/null
    $SUDO apt-get install -y -qq fuse3 </dev/null >/dev/null
fi
if ! "$PYTHON" -c 'import importlib.metadata as m, mfusepy; assert m.version("mfusepy") == "3.1.1"' >/dev/null 2>&1; then
    echo "install-test-deps: installing mfusepy (pip)" >&2
    PIP=("$PYTHON" -m pip install --quiet --disable-pip-version-check --no-input --root-user-action=ignore mfusepy==3.1.1)
    "${PIP[@]}" </dev/null || "${PIP[@]}" --break-system-packages </dev/null
fi
if [ ! -c /dev/fuse ]; then
    echo "install-test-deps: creating /dev/fuse" >&2
    $SUDO mknod -m 0666 /dev/fuse c 10 229
fi
"$PYTHON" -c 'import mfusepy' || { echo "install-test-deps: mfusepy cannot load libfuse3" >&2; exit 1; }

NODE_DIR="$(cd "$(dirname "$0")/.." && pwd)/tests/clients/node"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "install-test-deps: installing node.js and npm (apt)" >&2
    $SUDO apt-get update -qq </dev/null
    $SUDO apt-get install -y -qq nodejs npm </dev/null >/dev/null
fi
# The version package-lock.json pins; another one left in node_modules is replaced.
if [ ! -f "$NODE_DIR/node_modules/kafkajs/package.json" ] \
    || [ "$(node -p "require('$NODE_DIR/node_modules/kafkajs/package.json').version")" != 2.2.4 ]; then
    echo "install-test-deps: installing KafkaJS (npm ci)" >&2
    npm ci --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error </dev/null >/dev/null
fi
KAFKAJS=$(node -p "require('$NODE_DIR/node_modules/kafkajs/package.json').version")

"$PYTHON" -c 'import confluent_kafka as c, kafka; print("install-test-deps: kcat ok, confluent-kafka", c.__version__, "librdkafka", c.libversion()[0], "kafka-python", kafka.__version__)'
echo "install-test-deps: node $(node --version), KafkaJS $KAFKAJS"
