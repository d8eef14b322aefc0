#!/usr/bin/env bash
# The container image for heads and workers alike, built without Docker Hub or any other
# registry: `buildah from scratch`, then the release binaries (stripped; their debug info
# stays in dist/debug/) and only the files they need, unpacked from Debian's own packages
# (libc6 and libgcc-s1 for the C runtime, ca-certificates for https:// heads, webhooks and
# remote models). No shell, no package manager: nothing in it but agentfleet.
#
#   scripts/image.sh                  builds localhost/agentfleet:VERSION; prints that name last
#   scripts/image.sh --cuda           builds localhost/agentfleet:VERSION-cuda, for GPU workers
#
# FLEET_IMAGE_BINARIES=DIR takes fleet-head, fleet and (but for --cuda) fleet-worker from DIR
# instead of building them: scripts/test.sh passes what its `cargo test --workspace` just
# built, which a build of three packages alone would compile again with other features.
#
# The image runs as user 10001 (never root), listens on 7070, keeps the head's store in
# head/ of the volume /var/lib/agentfleet (a subfolder: the head makes its data folder
# private, which it may not do to a mounted volume's root) and reads models from the
# volume /models. Its health check is `fleet health` (the head's /healthz at $FLEET_HEAD,
# http://127.0.0.1:7070 unless set: a TLS head sets FLEET_HEAD=https://... and
# FLEET_TLS_CA; give worker containers --no-healthcheck). Default command: fleet-head; run
# a worker with `fleet-worker`:
#   podman run -d --name head -p 7070:7070 -e FLEET_TOKEN -e FLEET_JOIN_TOKEN localhost/agentfleet:0.1.0
#   podman run -d --no-healthcheck --stop-timeout 30 -e FLEET_HEAD=http://HEAD:7070 -e FLEET_JOIN_TOKEN \
#       -v ~/models:/models:ro localhost/agentfleet:0.1.0 fleet-worker
#
# The CUDA image is the same but for its fleet-worker, built with `--features cuda` (nvcc
# and CUDA's headers from PyPI: scripts/cuda-toolchain.sh), and CUDA's runtime libraries
# beside it (cudart, cuBLAS, cuBLASLt, cuRAND, from the same PyPI wheels; ~700 MB, most of
# it cuBLASLt). Its default command is fleet-worker and it has no health check. The GPU
# driver's own library (libcuda.so.1) and NVML are not in it: they must match the host's
# driver, and the NVIDIA Container Toolkit mounts them into the container (`podman run
# --device nvidia.com/gpu=all` through CDI; Kubernetes' NVIDIA device plugin). Without them
# the worker does not start. The kernels are built for the compute capability
# CUDA_COMPUTE_CAP names (90, Hopper, unless set; 80 for Ampere and Ada as well, at the cost
# of a second build of candle's kernels), recorded in the image's label
# org.agentfleet.cuda-compute-cap.
#   podman run -d --device nvidia.com/gpu=all --stop-timeout 30 -e FLEET_HEAD=http://HEAD:7070 \
#       -e FLEET_JOIN_TOKEN -v ~/models:/models:ro localhost/agentfleet:0.1.0-cuda
# Needs root (or `buildah unshare`), buildah, and apt-get for the packages' files.
. "$(dirname "$0")/env.sh"
cd "$root"
cuda=""
case "${1:-}" in
    "") ;;
    --cuda) cuda=1 ;;
    *)
        echo "usage: scripts/image.sh [--cuda]" >&2
        exit 2
        ;;
esac
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
name="localhost/agentfleet:$version${cuda:+-cuda}"
dist="${DIST_DIR:-$root/dist}"
debug="$dist/debug${cuda:+/cuda}"

# Docker's image format from the start: OCI images carry no health check.
export BUILDAH_FORMAT=docker
work="$(mktemp -d)"
container=""
cleanup() {
    if [ -n "$container" ]; then
        buildah rm "$container" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/bin" "$work/lib" "$work/debs" "$debug"
# apt-get downloads as its own unprivileged user (_apt), which must reach the folder.
chmod 755 "$work"
chmod 777 "$work/debs"
packages=(libc6 libgcc-s1 ca-certificates)
bins="${FLEET_IMAGE_BINARIES:-$CARGO_TARGET_DIR/release}"
if [ -z "$cuda" ]; then
    if [ -z "${FLEET_IMAGE_BINARIES:-}" ]; then
        cargo build --release --locked -p fleet-head -p fleet-worker -p fleet-cli --bins >&2
    fi
    cp "$bins/fleet-worker" "$work/bin/"
else
    if [ -z "${FLEET_IMAGE_BINARIES:-}" ]; then
        cargo build --release --locked -p fleet-head -p fleet-cli --bins >&2
    fi
    # fleet-head and fleet first: the CUDA build below may relink what is in $bins.
    cp "$bins/fleet-head" "$bins/fleet" "$work/bin/"
    # The same path as the CPU build's binary: copied at once, before anything rebuilds it.
    (
        eval "$("$root/scripts/cuda-toolchain.sh")"
        cargo build --release --locked -p fleet-worker --features cuda >&2
        cp "$CARGO_TARGET_DIR/release/fleet-worker" "$work/bin/"
        # The runtime libraries the CUDA worker links (cuBLAS loads cuBLASLt).
        for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
            cp "$CUDA_ROOT/lib/$lib" "$work/lib/"
        done
        echo "$CUDA_COMPUTE_CAP" >"$work/compute-cap"
    )
    # candle's kernels are C++: its runtime, too.
    packages+=(libstdc++6)
fi
if [ -z "$cuda" ]; then
    cp "$bins/fleet-head" "$bins/fleet" "$work/bin/"
fi
"$root/scripts/strip-debug.sh" "$work"/bin/fleet-head "$work"/bin/fleet-worker "$work"/bin/fleet
mv "$work"/bin/*.debug "$debug/"

# The C runtime the binaries were linked against (this machine's Debian release, so the
# image's glibc is the one they were built with) and the CA certificates.
download() { (cd "$work/debs" && apt-get download "${packages[@]}" >&2); }
if ! download; then
    # A fresh machine has no package lists yet.
    apt-get update -qq >&2
    download
fi

container="$(buildah from scratch)"
rootfs="$(buildah mount "$container")"
for deb in "$work"/debs/*.deb; do
    dpkg-deb --extract "$deb" "$rootfs"
done
# What ca-certificates' install script would make: one bundle of the Mozilla roots.
mkdir -p "$rootfs/etc/ssl/certs"
cat "$rootfs"/usr/share/ca-certificates/mozilla/*.crt >"$rootfs/etc/ssl/certs/ca-certificates.crt"
rm -rf "$rootfs/usr/share/doc" "$rootfs/usr/share/lintian" "$rootfs/usr/share/locale" \
    "$rootfs/usr/share/ca-certificates" "$rootfs/usr/sbin" "$rootfs/usr/bin" "$rootfs/sbin"
install -d -m 755 "$rootfs/usr/local/bin"
install -m 755 "$work"/bin/fleet-head "$work"/bin/fleet-worker "$work"/bin/fleet "$rootfs/usr/local/bin/"
if [ -n "$cuda" ]; then
    # Where the loader looks without a cache, and where the NVIDIA Container Toolkit puts
    # the driver's libraries.
    install -m 644 "$work"/lib/* "$rootfs/usr/lib/x86_64-linux-gnu/"
fi
# The user the processes run as, and the places they write.
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nfleet:x:10001:10001:agentfleet:/var/lib/agentfleet:/usr/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nfleet:x:10001:\n' >"$rootfs/etc/group"
# glibc without this file asks DNS before /etc/hosts (podman's and Kubernetes' names).
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
install -d -m 700 -o 10001 -g 10001 "$rootfs/var/lib/agentfleet"
install -d -m 755 "$rootfs/models"
install -d -m 1777 "$rootfs/tmp"
buildah umount "$container" >/dev/null

buildah config \
    --user 10001:10001 \
    --workingdir /var/lib/agentfleet \
    --env PATH=/usr/local/bin \
    --env HOME=/var/lib/agentfleet \
    --env FLEET_LISTEN=0.0.0.0:7070 \
    --env FLEET_DATA_DIR=/var/lib/agentfleet/head \
    --env FLEET_MODELS_DIR=/models \
    --port 7070/tcp \
    --volume /var/lib/agentfleet \
    --volume /models \
    --stop-signal SIGTERM \
    --label org.opencontainers.image.title=agentfleet \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    "$container"
if [ -n "$cuda" ]; then
    # The variables the NVIDIA Container Toolkit reads to mount the driver (all GPUs the
    # runtime was given; compute and NVML).
    buildah config \
        --env NVIDIA_VISIBLE_DEVICES=all \
        --env NVIDIA_DRIVER_CAPABILITIES=compute,utility \
        --cmd '["fleet-worker"]' \
        --label org.agentfleet.cuda-compute-cap="$(cat "$work/compute-cap")" \
        "$container"
else
    buildah config \
        --healthcheck 'CMD fleet health' \
        --healthcheck-interval 10s \
        --healthcheck-timeout 6s \
        --healthcheck-start-period 5s \
        --healthcheck-retries 3 \
        --cmd '["fleet-head"]' \
        "$container"
fi
# The image this one replaces, untagged by the commit: removed, so rebuilds do not pile
# up nameless images (kept if a container still uses it).
previous="$(buildah images --quiet --noheading "$name" 2>/dev/null || true)"
buildah commit --quiet --rm "$container" "$name" >&2
container=""
if [ -n "$previous" ] && [ "$previous" != "$(buildah images --quiet --noheading "$name")" ]; then
    buildah rmi "$previous" >/dev/null 2>&1 || true
fi
echo "$name"
