#!/usr/bin/env bash
# The container image for heads and workers alike, built without Docker Hub or any other
# registry: `buildah from scratch`, then the release binaries (stripped; their debug info
# stays in dist/debug/) and only the files they need, unpacked from Debian's own packages
# (libc6 and libgcc-s1 for the C runtime, ca-certificates for https:// heads, webhooks and
# remote models). No shell, no package manager: nothing in it but agentfleet.
#
#   scripts/image.sh                  builds localhost/agentfleet:VERSION; prints that name last
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
# Needs root (or `buildah unshare`), buildah, and apt-get for the packages' files.
. "$(dirname "$0")/env.sh"
cd "$root"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
name="localhost/agentfleet:$version"
dist="${DIST_DIR:-$root/dist}"

cargo build --release --locked -p fleet-head -p fleet-worker -p fleet-cli --bins >&2
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
mkdir -p "$work/bin" "$work/debs" "$dist/debug"
# apt-get downloads as its own unprivileged user (_apt), which must reach the folder.
chmod 755 "$work"
chmod 777 "$work/debs"
for binary in fleet-head fleet-worker fleet; do
    cp "$CARGO_TARGET_DIR/release/$binary" "$work/bin/"
done
"$root/scripts/strip-debug.sh" "$work"/bin/fleet-head "$work"/bin/fleet-worker "$work"/bin/fleet
mv "$work"/bin/*.debug "$dist/debug/"

# The C runtime the binaries were linked against (this machine's Debian release, so the
# image's glibc is the one they were built with) and the CA certificates.
download() { (cd "$work/debs" && apt-get download libc6 libgcc-s1 ca-certificates >&2); }
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
    --healthcheck 'CMD fleet health' \
    --healthcheck-interval 10s \
    --healthcheck-timeout 6s \
    --healthcheck-start-period 5s \
    --healthcheck-retries 3 \
    --cmd '["fleet-head"]' \
    --label org.opencontainers.image.title=agentfleet \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    "$container"
buildah commit --quiet --rm "$container" "$name" >&2
container=""
echo "$name"
