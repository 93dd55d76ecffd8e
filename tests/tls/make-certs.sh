#!/usr/bin/env bash
# Makes a test CA, a server certificate for localhost/127.0.0.1 signed by it, a client
# certificate (CN=carol) for mutual TLS, and a client certificate from another CA, in DIR.
# (Expired certificates are made by the Rust tests with rcgen: openssl 3.0 cannot backdate.)
# Usage: make-certs.sh DIR
set -euo pipefail
dir=${1:?usage: make-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1" 2>/dev/null; }
ec ca.key
openssl req -x509 -new -key ca.key -days 30 -subj "/CN=ringsocks test CA" -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
leaf() { # name subject days extensions
  local name=$1 subj=$2 days=$3 ext=$4
  ec "$name.key"
  openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr" 2>/dev/null
  printf '%b' "$ext" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$name.pem" \
    -days "$days" -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
server_ext='basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n'
leaf server "/CN=localhost" 30 "$server_ext"
leaf carol "/CN=carol" 30 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n'
# A second, unrelated CA and a client certificate it signed (refused by the first CA).
ec other-ca.key
openssl req -x509 -new -key other-ca.key -days 30 -subj "/CN=someone else" -out other-ca.pem 2>/dev/null
ec mallory.key
openssl req -new -key mallory.key -subj "/CN=mallory" -out mallory.csr 2>/dev/null
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > mallory.ext
openssl x509 -req -in mallory.csr -CA other-ca.pem -CAkey other-ca.key -CAcreateserial \
  -out mallory.pem -days 30 -extfile mallory.ext 2>/dev/null
rm -f mallory.csr mallory.ext
