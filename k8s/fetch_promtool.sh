#!/usr/bin/env bash
# Put promtool (the Prometheus rule checker) at $1, for k8s/rules_check.py, without installing
# anything system-wide: Debian's `prometheus` package is downloaded into a temp dir and only its
# promtool binary is unpacked (no root, no service started, no dpkg database touched).
#   k8s/fetch_promtool.sh .venv/bin/promtool
# Best effort: without apt-get (or offline) it says so and exits 0, so `make install` never
# fails on it; the rule checks are then skipped (unless PMIS_REQUIRE_PROMTOOL=1).
set -u
dest=${1:?usage: fetch_promtool.sh DEST}
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
  echo "promtool: apt-get/dpkg-deb not available; Prometheus rule checks will be skipped" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# apt-get download needs package lists; `apt-get update` is tried once if they are missing.
if ! (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1); then
  apt-get update -qq >/dev/null 2>&1 || true
  if ! (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1); then
    echo "promtool: could not download Debian's prometheus package; Prometheus rule checks will be skipped" >&2
    exit 0
  fi
fi
dpkg-deb -x "$work"/prometheus_*.deb "$work/x" && install -m 0755 "$work/x/usr/bin/promtool" "$dest" \
  && echo "promtool: $("$dest" --version 2>&1 | head -1) -> $dest" \
  || echo "promtool: unpacking failed; Prometheus rule checks will be skipped" >&2
exit 0
