#!/usr/bin/env bash
# Installs the Debian packages the project builds and tests with. Safe to run again: it installs
# only what is missing and says what it does. Needs root (or sudo).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git python3 python3-venv
  clang libclang-rt-14-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libopenmpi-dev openmpi-bin
  libopenblas-dev libopenblas-openmp-dev
  nlohmann-json3-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  iproute2 procps psmisc
)

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#PACKAGES[@]} Debian packages already installed"
else
  echo "install-deps: installing ${#missing[@]} missing packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  echo "install-deps: done"
fi

if command -v nvcc >/dev/null 2>&1; then
  echo "install-deps: CUDA toolkit found ($(nvcc --version | tail -1)); the CUDA backend will be built"
else
  echo "install-deps: no nvcc on PATH; the CPU-only system will be built"
fi
