#!/usr/bin/env bash
# Make what a secured federation needs: a CA and a SuperLink TLS certificate (openssl), and an
# ECDSA key pair per SuperNode for node authentication (ssh-keygen).
#
#   scripts/make_credentials.sh [OUT_DIR] [NUM_NODES] [EXTRA_HOST ...]
#
# OUT_DIR (default: credentials) gets certificates/{ca.crt,ca.key,superlink.crt,superlink.key}
# and keys/supernode-<i>{,.pub}. The SuperLink certificate is valid for localhost, 127.0.0.1,
# ::1, the compose service name "superlink", and every EXTRA_HOST (a DNS name or an IP address
# of the SuperLink host). Existing files are kept: delete them to make new ones.
set -euo pipefail

out=${1:-credentials}
nodes=${2:-3}
shift $(( $# > 2 ? 2 : $# ))

certs="$out/certificates"
keys="$out/keys"
mkdir -p "$certs" "$keys"

if [[ ! -f "$certs/superlink.crt" ]]; then
  san="DNS:localhost,DNS:superlink,IP:127.0.0.1,IP:::1"
  for host in "$@"; do
    if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then san+=",IP:$host"; else san+=",DNS:$host"; fi
  done
  openssl genrsa -out "$certs/ca.key" 4096 2>/dev/null
  openssl req -x509 -new -key "$certs/ca.key" -sha256 -days 365 \
    -subj "/CN=FedA2V federation CA" -out "$certs/ca.crt"
  openssl genrsa -out "$certs/superlink.key" 4096 2>/dev/null
  openssl req -new -key "$certs/superlink.key" -subj "/CN=superlink" \
    -out "$certs/superlink.csr"
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    "$san" > "$certs/superlink.ext"
  openssl x509 -req -in "$certs/superlink.csr" -CA "$certs/ca.crt" -CAkey "$certs/ca.key" \
    -CAcreateserial -days 365 -sha256 -extfile "$certs/superlink.ext" \
    -out "$certs/superlink.crt" 2>/dev/null
  rm -f "$certs/superlink.csr" "$certs/superlink.ext" "$certs/ca.srl"
  echo "made $certs (SuperLink names: $san)"
fi

for i in $(seq 1 "$nodes"); do
  key="$keys/supernode-$i"
  if [[ ! -f $key ]]; then
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "supernode-$i" -f "$key"
    echo "made $key{,.pub}"
  fi
done
# Containers run as uid 49999: they must be able to read what they mount.
chmod -R a+rX "$out"
