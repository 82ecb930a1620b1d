#!/usr/bin/env bash
# Builds the demo's container images locally, FROM scratch, with nothing pulled from a registry:
#
#   konnectivity/server:dev     proxy-server alone (no shell)
#   konnectivity/agent:dev      proxy-agent alone (no shell)
#   konnectivity/node:dev       the kubelet stand-in + busybox (sh, coreutils, httpd, nc, wget) for
#                               the processes its exec runs and the "pod" its port-forward reaches
#   konnectivity/apiserver:dev  konnectivity-kubectl + konnectivity-certs + busybox
#
# Each image's root filesystem is assembled under target/docker-images/<image>/rootfs: the binaries
# cargo built on this host (debug info stripped from the copies), the glibc shared libraries `ldd`
# says they need (dynamic loader included), and, where a shell is wanted, Debian's statically linked
# busybox (`apt-get download busybox-static`, unpacked with `dpkg-deb -x`) with one symlink per applet.
# Then `docker build` runs a Dockerfile that is just `FROM scratch` + `COPY rootfs/ /`.
#
# Environment:
#   BUILD_PROFILE=release|debug  cargo profile to build and package (default: release)
#   SKIP_CARGO_BUILD=1           package the binaries already in target/<profile>/ without running cargo
#   IMAGE_TAG=dev                tag of the images
#
# Arguments: the images to build (server, agent, node, apiserver); default all four.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

profile="${BUILD_PROFILE:-release}"
tag="${IMAGE_TAG:-dev}"
case "$profile" in
    release) cargo_profile_flag=(--release) ;;
    debug) cargo_profile_flag=() ;;
    *) echo "build-images.sh: BUILD_PROFILE must be release or debug, not '$profile'" >&2; exit 2 ;;
esac
bin_dir="$repo/target/$profile"
work="$repo/target/docker-images"

log() { printf '[build-images] %s\n' "$*" >&2; }

command -v docker >/dev/null 2>&1 || { echo "build-images.sh: docker is not installed" >&2; exit 1; }

images=("$@")
((${#images[@]})) || images=(server agent node apiserver)

# image -> binaries (and busybox) in it; binary -> cargo package.
declare -A contents=(
    [server]="proxy-server"
    [agent]="proxy-agent"
    [node]="kubelet-standin busybox"
    [apiserver]="konnectivity-kubectl konnectivity-certs busybox"
)
declare -A package_of=(
    [proxy-server]=proxy-server
    [proxy-agent]=proxy-agent
    [kubelet-standin]=konnectivity-kubelet
    [konnectivity-kubectl]=konnectivity-kubectl
    [konnectivity-certs]=konnectivity-certs
)
binaries=()
for image in "${images[@]}"; do
    [[ -n "${contents[$image]:-}" ]] || {
        echo "build-images.sh: unknown image '$image' (known: server agent node apiserver)" >&2
        exit 2
    }
    for item in ${contents[$image]}; do
        [[ "$item" == busybox ]] || binaries+=("$item")
    done
done

if [[ "${SKIP_CARGO_BUILD:-0}" != 1 ]]; then
    packages=()
    for b in "${binaries[@]}"; do packages+=(-p "${package_of[$b]}"); done
    log "cargo build ${cargo_profile_flag[*]:-} ${packages[*]}"
    cargo build "${cargo_profile_flag[@]}" "${packages[@]}"
fi

for b in "${binaries[@]}"; do
    [[ -x "$bin_dir/$b" ]] || {
        echo "build-images.sh: $bin_dir/$b is missing; build it first (or unset SKIP_CARGO_BUILD)" >&2
        exit 1
    }
done

# Debian's static busybox, downloaded once into target/docker-images/busybox.
busybox="$work/busybox/bin/busybox"
ensure_busybox() {
    if [[ ! -x "$busybox" ]]; then
        log "fetching Debian's busybox-static package"
        rm -rf "$work/busybox" && mkdir -p "$work/busybox/deb"
        (
            cd "$work/busybox/deb"
            # apt-get download needs the package lists; fetch them once if this machine has none.
            apt-get download busybox-static 2>/dev/null || { apt-get update -qq && apt-get download busybox-static; }
        )
        dpkg-deb -x "$work"/busybox/deb/busybox-static_*.deb "$work/busybox/x"
        mkdir -p "$work/busybox/bin"
        cp "$work/busybox/x/bin/busybox" "$busybox"
    fi
    # Only a static busybox runs without the libraries of its own distribution.
    if ! "$busybox" true || ldd "$busybox" 2>&1 | grep -q '=>'; then
        echo "build-images.sh: $busybox is not a working statically linked busybox" >&2
        exit 1
    fi
}

# Copies one binary into rootfs/usr/local/bin (debug info stripped) plus every shared library ldd
# lists for it, at the same path, symlinks resolved, so the dynamic loader finds them with no cache.
install_binary() {
    local rootfs="$1" bin="$2"
    mkdir -p "$rootfs/usr/local/bin"
    objcopy --strip-debug "$bin" "$rootfs/usr/local/bin/$(basename "$bin")"
    local lib
    while read -r lib; do
        [[ -n "$lib" ]] || continue
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done < <(ldd "$bin" | awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }   # libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x..)
        $1 ~ /^\// { print $1 }                        # /lib64/ld-linux-x86-64.so.2 (0x..)
    ')
    # A library ldd could not find would only fail at container start: fail here instead.
    if ldd "$bin" | grep -q "not found"; then
        echo "build-images.sh: $bin needs a library that is not installed:" >&2
        ldd "$bin" | grep "not found" >&2
        exit 1
    fi
}

install_busybox() {
    local rootfs="$1" applet
    ensure_busybox
    mkdir -p "$rootfs/bin"
    cp "$busybox" "$rootfs/bin/busybox"
    for applet in $("$busybox" --list); do
        [[ "$applet" == busybox ]] || ln -sf busybox "$rootfs/bin/$applet"
    done
}

# The few files a program expects in any root filesystem.
install_base() {
    local rootfs="$1"
    mkdir -p "$rootfs/etc" "$rootfs/tmp" "$rootfs/root" "$rootfs/var/log"
    chmod 1777 "$rootfs/tmp"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
    printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
}

build_image() {
    local name="$1"
    shift
    local ctx="$work/$name"
    rm -rf "$ctx"
    mkdir -p "$ctx/rootfs"
    install_base "$ctx/rootfs"
    local item
    for item in "$@"; do
        case "$item" in
            busybox) install_busybox "$ctx/rootfs" ;;
            *) install_binary "$ctx/rootfs" "$bin_dir/$item" ;;
        esac
    done
    log "docker build konnectivity/$name:$tag ($(du -sh "$ctx/rootfs" | cut -f1))"
    # The classic builder: BuildKit needs the buildx plugin, which this machine may not have.
    # Its output (and deprecation notice) is shown only if the build fails.
    local out old
    old=$(docker image inspect --format '{{.Id}}' "konnectivity/$name:$tag" 2>/dev/null || true)
    if ! out=$(DOCKER_BUILDKIT=0 docker build -f "$repo/docker/$name.Dockerfile" -t "konnectivity/$name:$tag" "$ctx" 2>&1); then
        printf '%s\n' "$out" >&2
        echo "build-images.sh: docker build of konnectivity/$name:$tag failed" >&2
        exit 1
    fi
    # Drop the image this tag replaced, unless a container still uses it.
    if [[ -n "$old" && "$old" != "$(docker image inspect --format '{{.Id}}' "konnectivity/$name:$tag")" ]]; then
        docker image rm "$old" >/dev/null 2>&1 || true
    fi
}

built=()
for image in "${images[@]}"; do
    # shellcheck disable=SC2086 # the contents list is split on purpose
    build_image "$image" ${contents[$image]}
    built+=("konnectivity/$image:$tag")
done
log "built: ${built[*]}"
