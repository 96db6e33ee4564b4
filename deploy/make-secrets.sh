#!/usr/bin/env bash
# Makes the secrets deploy/ starts with, into deploy/secrets/ (git-ignored; nothing here is ever
# committed): a CA, one certificate per process, bearer tokens per role and, per service, an env
# file of its token settings.
#
#   deploy/make-secrets.sh [DIR]        # default deploy/secrets; needs openssl and sha256sum
#
# - ca.crt, ca.key: the CA (keep ca.key offline; only ca.crt goes to the processes).
# - <svc>.crt, <svc>.key for scheduler, coordinator, result-store, worker, and client (the SDK and
#   CLI): EC P-256, valid for TLS servers and clients, names <svc>, graflow-<svc>,
#   graflow-<svc>.graflow.svc, localhost and 127.0.0.1 (the container health checks dial it).
# - tokens/<role>: one random token per role (service, worker, client, admin, viewer).
# - bus.key: the bus signing key, `<key id>:<hex secret>` (docs/security.md, "Integrity on the bus").
# - <svc>.env: GRAFLOW_<SVC>_AUTH_TOKENS (every role's `<role>:<sha256 hex>`: what the server
#   accepts) and GRAFLOW_<SVC>_AUTH_TOKEN (what the process sends: the worker's is the worker
#   token, the services' the service token); for the scheduler, the coordinator and the worker
#   also GRAFLOW_<SVC>_SIGNING_KEYS; client.env: GRAFLOW_CLIENT_AUTH_TOKEN (admin).
set -euo pipefail

dir=${1:-"$(dirname "$0")/secrets"}
days=${GRAFLOW_CERT_DAYS:-365}
mkdir -p "$dir/tokens"
umask 077
cd "$dir"

if [[ ! -f ca.crt ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj /CN=graflow-ca -keyout ca.key -out ca.crt 2>/dev/null
fi

for name in scheduler coordinator result-store worker client; do
  [[ -f $name.crt ]] && continue
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$name.key" -out "$name.csr" 2>/dev/null
  sans="DNS:$name,DNS:graflow-$name,DNS:graflow-$name.graflow.svc,DNS:localhost,IP:127.0.0.1"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -out "$name.crt" 2>/dev/null \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$sans")
  rm "$name.csr"
done

for role in service worker client admin viewer; do
  [[ -f tokens/$role ]] || openssl rand -hex 32 | tr -d '\n' > "tokens/$role"
done
[[ -f bus.key ]] || printf 'bus-%s:%s' "$(date +%Y%m%d)" "$(openssl rand -hex 32)" > bus.key
hash() { printf '%s' "$(cat "tokens/$1")" | sha256sum | cut -d' ' -f1; }
accepted=$(for role in service worker client admin viewer; do printf '%s:%s,' "$role" "$(hash "$role")"; done)

for svc in scheduler coordinator result-store; do
  prefix="GRAFLOW_$(echo "$svc" | tr 'a-z-' 'A-Z_')_"
  printf '%sAUTH_TOKENS=%s\n%sAUTH_TOKEN=%s\n' "$prefix" "${accepted%,}" "$prefix" "$(cat tokens/service)" > "$svc.env"
  [[ $svc == result-store ]] || printf '%sSIGNING_KEYS=%s\n' "$prefix" "$(cat bus.key)" >> "$svc.env"
done
printf 'GRAFLOW_WORKER_AUTH_TOKEN=%s\nGRAFLOW_WORKER_SIGNING_KEYS=%s\n' "$(cat tokens/worker)" "$(cat bus.key)" \
  > worker.env
printf 'GRAFLOW_CLIENT_AUTH_TOKEN=%s\n' "$(cat tokens/admin)" > client.env
# The containers run as uid 10001: compose bind-mounts these files as they are.
chmod 644 ./*.crt ./*.key ./*.env
chmod 600 ca.key bus.key
echo "secrets written to $(pwd)"
