#!/usr/bin/env bash
# Tools the registry tests and the image-copy benchmark need: Debian's
# docker-registry (distribution 2.8) as the real registry peer, skopeo to push
# test images and verify copies, apache2-utils for htpasswd (registry basic
# auth) and GNU time for the benchmark's peak RSS.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
[ -x /usr/bin/time ] || need+=(time)
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update
  apt-get install -y --no-install-recommends "${need[@]}"
fi
# The package starts a system registry on :5000 where systemd exists; the
# tests start their own instances and do not need it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl disable --now docker-registry || true
fi
