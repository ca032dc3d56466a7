#!/usr/bin/env bash
# Makes a test certificate authority and, signed by it, a server certificate (for the
# coordinator's --tls-cert/--tls-key; valid for localhost, 127.0.0.1 and any names given) and a
# client certificate (for mTLS: moe-client --tls-cert/--tls-key). For tests and trials only: a
# real deployment takes its certificates from its own CA.
#   deploy/tls/make-test-certs.sh OUT_DIR [DNS_NAME...]
# Writes OUT_DIR/{ca.pem,ca.key,server.pem,server.key,client.pem,client.key}.
set -euo pipefail
OUT=${1:?usage: make-test-certs.sh OUT_DIR [DNS_NAME...]}
shift
mkdir -p "$OUT"
SAN="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do SAN="$SAN,DNS:$name"; done
q() { "$@" >/dev/null 2>&1 || { echo "make-test-certs: failed: $*" >&2; exit 1; }; }
q openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=moe-serve test CA" \
  -keyout "$OUT/ca.key" -out "$OUT/ca.pem"
for who in server client; do
  q openssl req -newkey rsa:2048 -nodes -subj "/CN=moe-serve $who" \
    -keyout "$OUT/$who.key" -out "$OUT/$who.csr"
  ext="$OUT/$who.ext"
  if [[ $who == server ]]; then
    printf "subjectAltName=%s\nextendedKeyUsage=serverAuth\n" "$SAN" > "$ext"
  else
    printf "extendedKeyUsage=clientAuth\n" > "$ext"
  fi
  q openssl x509 -req -in "$OUT/$who.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" \
    -CAcreateserial -days 30 -extfile "$ext" -out "$OUT/$who.pem"
  rm -f "$OUT/$who.csr" "$ext"
done
chmod 600 "$OUT"/*.key
echo "make-test-certs: CA, server (${SAN}) and client certificates in $OUT"
