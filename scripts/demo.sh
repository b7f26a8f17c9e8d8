#!/usr/bin/env bash
# The main job on an embedded default: install canidae into .venv, start a local cluster
# (3 servers + 2 client agents on loopback), spawn packs, show where they run and how fast,
# kill a node for real and watch its packs move, then stop the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/canidae ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet .
fi
export PATH="$PWD/.venv/bin:$PATH"
data="$(mktemp -d -t canidae-demo-XXXXXX)"
export CANIDAE_CONFIG="$data/cli.toml"
trap 'canidae cluster down --data-dir "$data/cluster" >/dev/null 2>&1 || true; rm -rf "$data"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(10000 + s.getsockname()[1] % 9000 // 10 * 10)')
canidae cluster up --clients 2 --data-dir "$data/cluster" --base-port "$port"
canidae pack spawn web --cpu 500 --mem 256
canidae pack spawn batch --count 10000
canidae node list
canidae ring show
canidae drill node --data-dir "$data/cluster" --yes --packs 0
canidae cluster status
