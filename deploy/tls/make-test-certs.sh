#!/usr/bin/env bash
# Makes two test certificate authorities and certificates they sign. For tests and trials only:
# a real deployment takes its certificates from its own CAs.
#   - ca.pem: the public API's CA. server.pem (the coordinator's --tls-cert/--tls-key; valid for
#     localhost, 127.0.0.1 and any names given) and client.pem (mTLS: moe-client --tls-cert).
#   - cluster-ca.pem: the cluster's own CA. cluster.pem (for the coordinator's and every worker's
#     --cluster-cert/--cluster-key: a server and client certificate for the same names).
#   deploy/tls/make-test-certs.sh OUT_DIR [DNS_NAME...]
# Writes OUT_DIR/{ca,server,client,cluster-ca,cluster}.{pem,key}.
set -euo pipefail
OUT=${1:?usage: make-test-certs.sh OUT_DIR [DNS_NAME...]}
shift
mkdir -p "$OUT"
SAN="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do SAN="$SAN,DNS:$name"; done
q() { "$@" >/dev/null 2>&1 || { echo "make-test-certs: failed: $*" >&2; exit 1; }; }
# sign NAME CA KEY_USAGE [SAN]: NAME.pem/NAME.key signed by CA.pem/CA.key.
sign() {
  local who=$1 ca=$2 usage=$3 san=${4:-}
  q openssl req -newkey rsa:2048 -nodes -subj "/CN=moe-serve $who" \
    -keyout "$OUT/$who.key" -out "$OUT/$who.csr"
  local ext="$OUT/$who.ext"
  printf "extendedKeyUsage=%s\n" "$usage" > "$ext"
  [[ -n $san ]] && printf "subjectAltName=%s\n" "$san" >> "$ext"
  q openssl x509 -req -in "$OUT/$who.csr" -CA "$OUT/$ca.pem" -CAkey "$OUT/$ca.key" \
    -CAcreateserial -days 30 -extfile "$ext" -out "$OUT/$who.pem"
  rm -f "$OUT/$who.csr" "$ext"
}
for ca in ca cluster-ca; do
  q openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=moe-serve test $ca" \
    -keyout "$OUT/$ca.key" -out "$OUT/$ca.pem"
done
sign server ca serverAuth "$SAN"
sign client ca clientAuth
sign cluster cluster-ca serverAuth,clientAuth "$SAN"
chmod 600 "$OUT"/*.key
echo "make-test-certs: CA, server (${SAN}) and client certificates; cluster CA and cluster (${SAN}) certificate in $OUT"
