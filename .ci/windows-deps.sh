#!/usr/bin/env bash
# Installs everything the Windows test lane needs, idempotently, on a Debian 12 machine:
#   - gcc-mingw-w64-x86-64 (linker) and the rustup target x86_64-pc-windows-gnu
#   - openssl and osslsigncode (Authenticode signing and `cargo xtask sign-check`)
#   - wine + wine64 (runs the Windows test binaries), xvfb (a display for setup.exe), tinyproxy
#     (the forward proxy of wine-e2e's network scenario)
#   - wixl and msitools (`cargo xtask msi`: the MSI built from build_scripts/cms_agent.wxs, its
#     tables read with msiinfo)
#   - wine32:i386 (Inno Setup's ISCC.exe and setup.exe are 32-bit); when apt cannot resolve it
#     (the mirror's i386 index of bookworm-security failed to download on 2026-11-25), the
#     fallback fetches the i386 .debs from the same pool path and mirror apt uses for amd64
#   - the npm package `innosetup` (ISCC.exe and its DLLs), fetched with `npm pack` (no scripts run)
# Downloads are cached under $CMS_CI_CACHE (default /var/cache/cms-agent-ci: apt .debs, the
# npm tarball, the i386 .debs of the fallback; xtask keeps its Wine prefix template there too)
# so a second run on the same machine is fast; a fresh machine works from nothing.
# Environment: CMS_CI_CACHE, CMS_INNOSETUP_VERSION (default 6.4.1), CMS_CI_FORCE_WINE32_FALLBACK=1
# (skip the plain wine32 install, to exercise the fallback).
# Never fails just because wine32 is missing: the lane then reports the installer checks as
# SKIPPED. It does fail when something every Windows check needs (mingw, target, wine64) is missing.
# The last lines are a machine-readable summary (also written to $CMS_CI_CACHE/windows-deps.env):
#   MINGW=yes|no  RUST_TARGET=yes|no  WINE64=yes|no  XVFB=yes|no  WINE32=yes|no  WINE32_VIA=...
#   WINE32_REASON=...  ISCC=/path/to/ISCC.exe|none
set -uo pipefail

CACHE=${CMS_CI_CACHE:-/var/cache/cms-agent-ci}
INNOSETUP_VERSION=${CMS_INNOSETUP_VERSION:-6.4.1}
TARGET=x86_64-pc-windows-gnu
APT_ARCHIVES=$CACHE/apt-archives
export DEBIAN_FRONTEND=noninteractive

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

log() { printf '[windows-deps] %s\n' "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

mkdir -p "$APT_ARCHIVES/partial" "$CACHE/npm" "$CACHE/wine32-debs" || die "cannot create $CACHE"
# Our own archive dir: the docker-clean hook empties /var/cache/apt/archives after every run.
APT_OPTS=(-o "Dir::Cache::archives=$APT_ARCHIVES" -o Acquire::Retries=3)

# Status of a package (name may carry :arch); prints "installed" or nothing.
is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

APT_UPDATED=no
apt_update_once() {
    [ "$APT_UPDATED" = yes ] && return 0
    APT_UPDATED=yes
    log "apt-get update"
    # A failing index (seen: bookworm-security i386, size mismatch) makes update exit non-zero
    # while the other indexes are fine; carry on and let the installs decide.
    if ! $SUDO apt-get "${APT_OPTS[@]}" update -q >"$CACHE/apt-update.log" 2>&1; then
        log "apt-get update reported errors (see $CACHE/apt-update.log):"
        grep -E '^(E|W):' "$CACHE/apt-update.log" | head -n 5 >&2
    fi
}

apt_install() {
    $SUDO apt-get "${APT_OPTS[@]}" install -y -q --no-install-recommends "$@"
}

# --- i386 architecture (must be known to apt before the single update) -----------------------
if ! dpkg --print-foreign-architectures | grep -qx i386; then
    log "dpkg --add-architecture i386"
    $SUDO dpkg --add-architecture i386 || die "cannot add the i386 architecture"
    APT_UPDATED=no
fi

# --- 64-bit packages -------------------------------------------------------------------------
PKGS64=(gcc-mingw-w64-x86-64 wine wine64 xvfb xauth curl ca-certificates openssl osslsigncode tinyproxy wixl msitools)
missing=()
for p in "${PKGS64[@]}"; do is_installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    apt_update_once
    log "apt-get install ${missing[*]}"
    apt_install "${missing[@]}" >"$CACHE/apt-install-64.log" 2>&1 ||
        { tail -n 20 "$CACHE/apt-install-64.log" >&2; die "apt-get install ${missing[*]} failed"; }
else
    log "64-bit packages already installed: ${PKGS64[*]}"
fi

# --- rustup target ---------------------------------------------------------------------------
if command -v rustup >/dev/null 2>&1; then
    if rustup target list --installed | grep -qx "$TARGET"; then
        log "rustup target $TARGET already installed"
    else
        log "rustup target add $TARGET"
        rustup target add "$TARGET" >&2 || die "rustup target add $TARGET failed"
    fi
else
    die "rustup not found: cannot add $TARGET"
fi

# --- wine32:i386 -----------------------------------------------------------------------------
WINE32=no
WINE32_VIA=none
WINE32_REASON=""

# The fallback. Multi-Arch: same libraries must have the same version on amd64 and i386. When
# the mirror's i386 index is incomplete (seen: bookworm-security's failed to download) or the
# machine's amd64 libraries come from a source apt no longer lists, the i386 twins apt can see
# are at other versions and `apt-get install wine32:i386` cannot resolve. So, for each M-A:same
# package in wine32:i386's dependency closure whose amd64 twin is installed:
#   T = the amd64 candidate (what apt keeps or upgrades amd64 to);
#   i386 candidate == T            -> nothing to fetch; pin pkg:amd64=T (helps the resolver);
#   otherwise                      -> fetch pkg_T_i386.deb from the same pool path
#                                     (pool/updates/main/... or pool/main/...) on the archives
#                                     apt is configured with, and pin pkg:amd64=T;
#   not on the mirror (seen: libsasl2*) -> pin both arches to the i386 candidate (a downgrade).
# Then one apt-get install with --allow-downgrades of the .debs, the pins and wine32:i386.
pool_dir() { # pool sub-directory of a source package: lib* -> libX, else first letter
    case "$1" in lib?*) printf '%s/%s' "${1:0:4}" "$1" ;; *) printf '%s/%s' "${1:0:1}" "$1" ;; esac
}

fetch_i386_deb() { # $1 package, $2 version, $3 source package; prints the local path
    local file=$CACHE/wine32-debs/${1}_${2#*:}_i386.deb uri comp
    if [ -s "$file" ]; then printf '%s' "$file"; return 0; fi
    for uri in $ARCHIVE_URIS; do
        for comp in pool/updates/main pool/main; do
            if curl -fsSL --retry 2 -o "$file.part" "${uri%/}/$comp/$(pool_dir "$3")/$(basename "$file")"; then
                mv "$file.part" "$file" && printf '%s' "$file" && return 0
            fi
        done
    done
    rm -f "$file.part"
    return 1
}

wine32_fallback() {
    local -a debs=() pins=() names=()
    local -A inst=() src=() ma=() cand=()
    local pkg ver source multi status key value t i file
    ARCHIVE_URIS=$(apt-get indextargets --format '$(REPO_URI)' 2>/dev/null | sort -u)
    [ -n "$ARCHIVE_URIS" ] || { WINE32_REASON="apt-get indextargets listed no archive"; return 1; }
    mapfile -t names < <(apt-cache depends --recurse --no-recommends --no-suggests \
        --no-conflicts --no-breaks --no-replaces --no-enhances wine32:i386 2>/dev/null |
        grep -E '^[a-z0-9]' | sed 's/:i386$//' | sort -u)
    [ ${#names[@]} -gt 0 ] || { WINE32_REASON="apt-cache depends wine32:i386 found nothing"; return 1; }
    while read -r pkg ver source multi status; do
        [ "$status" = installed ] || continue
        inst[$pkg]=$ver src[$pkg]=${source:-$pkg} ma[$pkg]=$multi
    done < <(dpkg-query -W -f='${Package} ${Version} ${source:Package} ${Multi-Arch} ${db:Status-Status}\n' \
        "${names[@]/%/:amd64}" 2>/dev/null)
    while read -r key value; do cand[$key]=$value; done < <(
        apt-cache policy "${names[@]/%/:amd64}" "${names[@]/%/:i386}" 2>/dev/null |
            awk '/^[^ ].*:$/ {h=$1; sub(/:$/, "", h); sub(/:amd64$/, "", h); next}
                 /^  Candidate:/ {print h, $2}')
    for pkg in "${!inst[@]}"; do
        [ "${ma[$pkg]}" = same ] || continue
        t=${cand[$pkg]:-${inst[$pkg]}} i=${cand[$pkg:i386]:-}
        if [ "$i" = "$t" ]; then
            [ "${inst[$pkg]}" = "$t" ] || pins+=("$pkg:amd64=$t")
        elif file=$(fetch_i386_deb "$pkg" "$t" "${src[$pkg]}"); then
            debs+=("$file") pins+=("$pkg:amd64=$t")
        elif [ -n "$i" ] && [ "$i" != "(none)" ]; then
            log "no i386 build of $pkg $t on the mirror; pinning both arches to $i"
            pins+=("$pkg:amd64=$i" "$pkg:i386=$i")
        fi
    done
    log "fallback: ${#debs[@]} i386 .debs fetched, ${#pins[@]} version pins"
    if ! apt_install --allow-downgrades "${debs[@]}" "${pins[@]}" wine32:i386 \
        >"$CACHE/apt-install-wine32-fallback.log" 2>&1; then
        grep -E '^(E:| )' "$CACHE/apt-install-wine32-fallback.log" | head -n 12 >&2
        WINE32_REASON="fallback apt-get install failed (see $CACHE/apt-install-wine32-fallback.log)"
        return 1
    fi
}

if is_installed wine32:i386; then
    WINE32=yes WINE32_VIA=already-installed
    log "wine32:i386 already installed"
else
    apt_update_once
    if [ "${CMS_CI_FORCE_WINE32_FALLBACK:-0}" != 1 ] &&
        log "apt-get install wine32:i386 (plain)" &&
        apt_install wine32:i386 >"$CACHE/apt-install-wine32.log" 2>&1; then
        WINE32=yes WINE32_VIA=plain
    else
        log "plain install of wine32:i386 failed; trying the pool/updates fallback"
        grep -E '^(E:| )' "$CACHE/apt-install-wine32.log" 2>/dev/null | head -n 8 >&2
        if wine32_fallback && is_installed wine32:i386; then
            WINE32=yes WINE32_VIA=fallback
        fi
    fi
    [ "$WINE32" = yes ] || WINE32_REASON=${WINE32_REASON:-"apt could not install wine32:i386"}
fi

# --- Inno Setup (npm package innosetup) ------------------------------------------------------
ISCC=none
tgz=$CACHE/npm/innosetup-$INNOSETUP_VERSION.tgz
unpacked=$CACHE/innosetup-$INNOSETUP_VERSION
if [ ! -s "$tgz" ]; then
    if command -v npm >/dev/null 2>&1; then
        log "npm pack innosetup@$INNOSETUP_VERSION"
        (cd "$CACHE/npm" && npm pack --silent "innosetup@$INNOSETUP_VERSION" >&2) ||
            log "npm pack innosetup@$INNOSETUP_VERSION failed"
    else
        log "npm not found: cannot fetch Inno Setup"
    fi
fi
if [ -s "$tgz" ] && [ ! -f "$unpacked/package/bin/ISCC.exe" ]; then
    rm -rf "$unpacked" && mkdir -p "$unpacked" && tar -xzf "$tgz" -C "$unpacked" ||
        log "cannot unpack $tgz"
fi
[ -f "$unpacked/package/bin/ISCC.exe" ] && ISCC=$unpacked/package/bin/ISCC.exe

# --- summary ---------------------------------------------------------------------------------
yn() { if "$@" >/dev/null 2>&1; then echo yes; else echo no; fi; }
MINGW=$(yn command -v x86_64-w64-mingw32-gcc)
RUST_TARGET=$(yn sh -c "rustup target list --installed | grep -qx $TARGET")
WINE64=$(yn test -x /usr/lib/wine/wine64)
XVFB=$(yn command -v xvfb-run)
summary=$(
    printf 'MINGW=%s\nRUST_TARGET=%s\nWINE64=%s\nXVFB=%s\n' "$MINGW" "$RUST_TARGET" "$WINE64" "$XVFB"
    printf 'WINE32=%s\nWINE32_VIA=%s\nWINE32_REASON=%q\nISCC=%q\n' \
        "$WINE32" "$WINE32_VIA" "$WINE32_REASON" "$ISCC"
)
printf '%s\n' "$summary" >"$CACHE/windows-deps.env"
echo "== windows-deps summary ($CACHE/windows-deps.env) =="
printf '%s\n' "$summary"
[ "$MINGW$RUST_TARGET$WINE64" = yesyesyes ] || die "the Windows lane cannot run without mingw, the rustup target and wine64"
