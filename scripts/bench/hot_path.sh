#!/usr/bin/env bash
# Instruction-count benches of the hot path (benches/hot_path.rs) under
# valgrind's callgrind, with gungraun. Installs `gungraun-runner` at the
# version Cargo.lock pins for the `gungraun` crate when it is missing or
# another version (`cargo install`, from crates.io). Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/../.."

version=$(awk '/^name = "gungraun"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if [[ -z "$version" ]]; then
    echo "hot_path: gungraun is not in Cargo.lock" >&2
    exit 1
fi
if ! command -v valgrind >/dev/null 2>&1; then
    echo "hot_path: SKIPPED, valgrind is not installed (apt-get install valgrind)" >&2
    exit 0
fi
installed=$(gungraun-runner --version 2>/dev/null | awk '{ print $2 }' || true)
if [[ "$installed" != "$version" ]]; then
    echo "hot_path: installing gungraun-runner $version (found: ${installed:-none})" >&2
    cargo install --quiet --locked gungraun-runner --version "$version"
fi
exec cargo bench --bench hot_path
