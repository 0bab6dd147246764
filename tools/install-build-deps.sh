#!/usr/bin/env bash
# Installs what building and running mixtral.cpp needs on Debian 12 (as root or with sudo): the compiler,
# CMake and Ninja, and the libraries the programs link (CLI11, nlohmann-json, cpp-httplib, SentencePiece).
# What the tests need besides comes from tools/install-deps.sh (tools/test.sh runs it). Installs only what
# is missing: a second run checks and returns.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
PKGS="g++ cmake ninja-build pkg-config libcli11-dev nlohmann-json3-dev libcpp-httplib-dev libsentencepiece-dev"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
