#!/usr/bin/env bash
# The whole test suite (the README's second command). Fails on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s ====\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "unit, integration, property and doc tests"
cargo test --workspace
