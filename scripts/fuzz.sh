#!/usr/bin/env bash
# Coverage-guided fuzzing of every input that comes from outside (fuzz/fuzz_targets/*.rs):
#   scripts/fuzz.sh [SECONDS]      (per target; default 60)
# Builds the targets with cargo-fuzz on the stable toolchain (libFuzzer, no sanitizer,
# optimised with debug assertions and overflow checks on), then runs each for SECONDS in an
# empty network namespace as an unprivileged user (nobody when run as root), niced, with a
# per-input timeout and a memory limit, so a hang or a memory blow-up counts as a crash.
# Prints one line per target (executions, coverage, crashes) and exits non-zero when any
# target crashed, hung or ran out of memory. Corpora, logs and artifacts go to a temp dir the
# script names; the seeds in fuzz/corpus/ and the dictionaries in fuzz/dicts/ are only read.
set -euo pipefail

secs=${1:-60}
[[ $secs =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS per target]" >&2; exit 2; }
# libFuzzer's own limits: one input may take TIMEOUT seconds and the process RSS_MB MB.
timeout_s=${FUZZ_TIMEOUT:-10}
rss_mb=${FUZZ_RSS_MB:-1024}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    nice -n 19 cargo install cargo-fuzz --locked
fi
# The machine is shared: one build job unless the caller says otherwise.
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} nice -n 19 \
    cargo fuzz build --sanitizer none --release --debug-assertions >&2
triple=$(rustc -vV | sed -n 's/^host: //p')
targets=$(cargo fuzz list)

work=$(mktemp -d /tmp/ros-macvlan-fuzz.XXXXXX)
echo "fuzzing ${secs}s per target; corpora, logs and artifacts in $work" >&2
for t in $targets; do
    mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
    install -m 0755 "target/$triple/release/$t" "$work/$t/$t"
    cp corpus/"$t"/* "$work/$t/corpus/"
    cp dicts/*.dict "$work/$t/"
done

# The fence around each run: an empty network namespace (only a down `lo`), and no
# privileges. As root: a new netns and the nobody user. Otherwise: a user namespace with its
# own netns (the caller's uid stays unprivileged outside it).
if [[ $(id -u) -eq 0 ]]; then
    chown -R nobody:nogroup "$work"
    fence=(unshare --net -- setpriv --reuid=nobody --regid=nogroup --clear-groups
        --inh-caps=-all --bounding-set=-all --no-new-privs --)
else
    fence=(unshare --user --net --)
fi

failed=0
summary=()
for t in $targets; do
    dir=$work/$t
    # timeout(1) is a backstop should libFuzzer itself not stop after -max_total_time.
    dict=dicts/cni.dict
    [[ $t == rtps_* ]] && dict=dicts/rtps.dict
    [[ $t == arp_* ]] && dict=dicts/arp.dict
    [[ $t == agent_* ]] && dict=dicts/agent.dict
    status=0
    timeout --kill-after=10 $((secs + 120)) "${fence[@]}" nice -n 19 "$dir/$t" \
        -max_total_time="$secs" -timeout="$timeout_s" -rss_limit_mb="$rss_mb" \
        -dict="$dir/$(basename "$dict")" -print_final_stats=1 -artifact_prefix="$dir/artifacts/" "$dir/corpus" \
        >"$dir/log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
    stats=$(grep -E '^#[0-9]+.*cov: ' "$dir/log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$stats")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$stats")
    crashes=$(find "$dir/artifacts" -type f \( -name 'crash-*' -o -name 'timeout-*' \
        -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
    line=$(printf '%-16s executions %12s  cov %5s  ft %6s  crashes %s' \
        "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$crashes")
    if [[ $status -ne 0 || $crashes -ne 0 ]]; then
        failed=1
        line+="  FAILED (exit $status; log $dir/log; artifacts $dir/artifacts)"
    fi
    summary+=("$line")
    echo "$line" >&2
done

echo
echo "fuzz run: ${secs}s per target, -timeout=${timeout_s} -rss_limit_mb=${rss_mb}; artifacts in $work/<target>/artifacts"
printf '%s\n' "${summary[@]}"
exit $failed
