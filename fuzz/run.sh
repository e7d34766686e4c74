#!/usr/bin/env bash
# `make fuzz`: runs every fuzz target for FUZZ_SECONDS (default 60) from its
# committed seeds (fuzz/corpus/<target>) and prints executions per target.
#
# The corpus each run grows goes to target/fuzz-corpus/<target>, never into
# fuzz/corpus, which holds only the seeds `write_seeds` writes (and inputs
# worth keeping as regressions). A crash leaves its input in
# fuzz/artifacts/<target>/ and makes this script fail.
#
#   FUZZ_SECONDS=300 make fuzz                 longer
#   FUZZ_TARGETS="path_normalize" make fuzz    some targets only
#   FUZZ_SANITIZER=address make fuzz           with ASan (default: none,
#                                              faster; the code under test is safe Rust)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-path_normalize policy_load check_request token_verify}
sanitizer=${FUZZ_SANITIZER:-none}
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ((seconds < 1 || seconds > 86400)); then
    echo "fuzz: FUZZ_SECONDS must be a whole number of seconds (1 to 86400)" >&2
    exit 64
fi

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz: cargo fuzz needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install --quiet --locked cargo-fuzz
fi

# Debug assertions on (-a): integer overflow is a finding too.
flags=(-s "$sanitizer" -a)
echo "== building fuzz targets (sanitizer: $sanitizer)" >&2
# shellcheck disable=SC2086 # the target list is meant to split
for target in $targets; do
    cargo +nightly fuzz build "${flags[@]}" "$target" >&2
done

mkdir -p target/fuzz-logs
declare -a rows
failed=0
for target in $targets; do
    work="$root/target/fuzz-corpus/$target"
    seeds="$root/fuzz/corpus/$target"
    log="$root/target/fuzz-logs/$target.log"
    mkdir -p "$work" "$seeds"
    echo "== $target: ${seconds}s" >&2
    status=ok
    if ! cargo +nightly fuzz run "${flags[@]}" "$target" "$work" "$seeds" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=4096 \
        >"$log" 2>&1; then
        status=CRASH
        failed=1
    fi
    stat() { awk -v k="stat::$1:" '$1 == k { print $2 }' "$log" | tail -n 1; }
    execs=$(stat number_of_executed_units)
    rate=$(stat average_exec_per_sec)
    added=$(stat new_units_added)
    rss=$(stat peak_rss_mb)
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -n 1 | awk '{ print $2 }')
    corpus=$(find "$work" -type f | wc -l)
    rows+=("$(printf '%-16s %-6s %8ss %12s %10s %8s %8s %8s %8s' "$target" "$status" "$seconds" \
        "${execs:-?}" "${rate:-?}" "${cov:-?}" "${added:-?}" "$corpus" "${rss:-?}")")
    if [[ $status == CRASH ]]; then
        echo "fuzz: $target failed; the end of $log:" >&2
        tail -n 40 "$log" >&2
        ls -1 "fuzz/artifacts/$target" 2>/dev/null | sed 's/^/  artifact: fuzz\/artifacts\/'"$target"'\//' >&2 || true
    fi
done

printf '\n%-16s %-6s %9s %12s %10s %8s %8s %8s %8s\n' target result time executions "exec/s" cov "new" corpus "rss MB"
printf '%s\n' "${rows[@]}"
echo "(logs: target/fuzz-logs/; grown corpora: target/fuzz-corpus/)"
exit "$failed"
