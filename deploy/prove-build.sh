#!/usr/bin/env bash
# Builds the CPU image with buildah on a machine without a Docker engine or registry access, then
# checks it (docs/operations.md#what-the-buildah-build-proves). Run as root from the repository
# root; needs Debian's buildah and debootstrap (`apt-get install buildah debootstrap`) and the
# package indexes (Debian's, for the stand-in base; PyPI, for the locks).
#
# Nothing can be pulled, so python:3.11-slim-bookworm is stood in for by a Debian bookworm made
# with debootstrap (Debian's Python 3.11 instead of the image's own build of it), committed under
# the official image's name so the Dockerfile is built unchanged. The build runs with chroot
# isolation and writes a Docker-format image, the format that keeps HEALTHCHECK.
set -euo pipefail
WORK=${WORK:-/tmp/statestream-buildah}
BASE=docker.io/library/python:3.11-slim-bookworm
IMAGE=localhost/statestream:proof
PORT=${PORT:-50999}
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
mkdir -p "$WORK"

# The Debian mirror to bootstrap from: $DEBIAN_MIRROR, else the first one this machine's apt uses
# (deb822 .sources files or the classic sources.list), so no host is named here.
debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    local found
    found=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$found" ] || found=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    [ -n "$found" ] || { echo "prove-build: no Debian mirror in apt's sources; set DEBIAN_MIRROR" >&2; exit 2; }
    echo "$found"
}

if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    echo "== stand-in base: debootstrap bookworm with python3, python3-venv, ca-certificates"
    [ -x "$WORK/rootfs/usr/bin/python3" ] || debootstrap --variant=minbase \
        --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs" "$(debian_mirror)"
    base=$(buildah from scratch)
    cp -a "$WORK/rootfs/." "$(buildah mount "$base")/"
    buildah umount "$base"
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd python3 "$base"
    buildah commit --quiet "$base" "$BASE"
    buildah rm "$base" >/dev/null
fi

# This machine reaches the package index through a TLS proxy that only its own CA bundle trusts:
# the RUN steps see that bundle and a pip.conf naming it (build-time mounts, not in the image).
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$WORK/pip.conf"
echo "== build (buildah $(buildah --version | cut -d' ' -f3), --format docker, --isolation chroot, no pull)"
# Debian 12's buildah (1.28) does not resolve the ARG in `FROM ${RUNTIME}-base` when it skips unused
# stages, and then finds no cpu-base; so every stage is built, the unused GPU base from the same
# stand-in (its apt step runs against Debian instead of Ubuntu). BuildKit skips it.
buildah build --format docker --isolation chroot --pull-never --layers=false --skip-unused-stages=false \
    --build-arg CUDA_IMAGE="$BASE" \
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro -v "$WORK/pip.conf:/etc/pip.conf:ro" \
    -t "$IMAGE" .

echo "== image configuration"
buildah inspect --type image --format \
    'user={{.Docker.Config.User}} entrypoint={{.Docker.Config.Entrypoint}} healthcheck={{.Docker.Config.Healthcheck.Test}} interval={{.Docker.Config.Healthcheck.Interval}} timeout={{.Docker.Config.Healthcheck.Timeout}} retries={{.Docker.Config.Healthcheck.Retries}}' \
    "$IMAGE"
echo
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE"

ctr=$(buildah from "$IMAGE")
trap 'kill "${server:-0}" 2>/dev/null || true; buildah rm "$ctr" >/dev/null' EXIT
root=$(buildah mount "$ctr")
echo "== contents"
buildah run --user 10001:10001 "$ctr" -- python3 -c '
import importlib.metadata as m, importlib.util as u, os
names = sorted(d.metadata["Name"].lower() for d in m.distributions())
print("distributions:", " ".join(names))
print("onnxruntime packages:", [n for n in names if n.startswith("onnxruntime")])
print("torch importable:", u.find_spec("torch") is not None, "| training:", u.find_spec("training") is not None,
      "| loadtest:", u.find_spec("loadtest") is not None)
print("uid", os.getuid(), "can write /models/char_lm/step.onnx:", os.access("/models/char_lm/step.onnx", os.W_OK),
      "| can create in /models:", os.access("/models", os.W_OK))'
(cd "$root" && stat -c '%U:%G %a /%n' models models/char_lm models/char_lm/step.onnx && ls models/char_lm \
    && du -sh opt/statestream models)
set +e
buildah run "$ctr" -- statestream bench; echo "bench exit: $?"
set -e

echo "== serve as uid 10001 on 127.0.0.1:$PORT; the HEALTHCHECK command before, during and after"
healthcheck=(statestream client health --timeout-s 3)
buildah run --user 10001:10001 --env STATESTREAM_PORT="$PORT" --env STATESTREAM_TARGET="127.0.0.1:$PORT" \
    "$ctr" -- statestream serve --host 127.0.0.1 >"$WORK/serve.log" 2>&1 &
server=$!
for _ in $(seq 120); do
    if buildah run --env STATESTREAM_TARGET="127.0.0.1:$PORT" "$ctr" -- "${healthcheck[@]}" >/dev/null 2>&1; then break; fi
    sleep 1
done
buildah run --env STATESTREAM_TARGET="127.0.0.1:$PORT" "$ctr" -- "${healthcheck[@]}"; echo "healthcheck exit: $?"
buildah run --env STATESTREAM_TARGET="127.0.0.1:$PORT" "$ctr" -- statestream client models
buildah run --env STATESTREAM_TARGET="127.0.0.1:$PORT" "$ctr" -- \
    statestream client generate --model char_lm --prompt "ROMEO:" --length 40 --seed 7 --temperature 0.8
# SIGTERM to the server itself (found by its port), as a container runtime sends it: it drains.
pid=$(ss -Hltnp "sport = :$PORT" | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2)
kill -TERM "$pid"
wait "$server" || true
set +e
buildah run --env STATESTREAM_TARGET="127.0.0.1:$PORT" "$ctr" -- "${healthcheck[@]}"; echo "healthcheck exit after stop: $?"
echo "== server log (last lines)"; tail -n 3 "$WORK/serve.log" | cut -c1-200
