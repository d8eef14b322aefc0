#!/usr/bin/env bash
# The batch-invariance tests that used to be flaky, each run N times in a loop (default 50):
# decoder_parity's sequences batched at different steps, the engine's batch/thread/load
# stress test, and 64 chats over two worker processes compared with the engine alone.
# Prints the failures per test; exits non-zero if any run failed.
#   ./scripts/repeat-batching-tests.sh [N]
. "$(dirname "$0")/env.sh"
cd "$root"
runs="${1:-50}"
cargo build --release --bins --quiet
cargo test --release --no-run --quiet -p fleet-inference -p fleet-worker
failed=0
for spec in \
    "fleet-inference decoder_parity sequences_batched_at_different_steps_produce_their_solo_tokens" \
    "fleet-inference batch_invariance tokens_do_not_depend_on_the_batch_threads_or_load" \
    "fleet-worker local_models sixty_four_chats_over_two_workers_equal_the_engine_alone"; do
    read -r package test name <<<"$spec"
    failures=0
    started=$(date +%s)
    for _ in $(seq "$runs"); do
        if ! cargo test --release --quiet -p "$package" --test "$test" -- --exact "$name" >/tmp/repeat-batching.log 2>&1; then
            failures=$((failures + 1))
            tail -5 /tmp/repeat-batching.log
        fi
    done
    echo "$test::$name: $failures of $runs runs failed ($(($(date +%s) - started)) s)"
    failed=$((failed + failures))
done
[ "$failed" -eq 0 ]
