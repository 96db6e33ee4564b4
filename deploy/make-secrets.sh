#!/usr/bin/env bash
# Makes the secrets deploy/ starts with, into deploy/secrets/ (git-ignored; nothing here is ever
# committed): a CA, one certificate per process, bearer tokens per role and, per service, an env
# file of its token settings.
#
#   deploy/make-secrets.sh [DIR]        # default deploy/secrets; needs openssl and sha256sum
#
# - ca.crt, ca.key: the CA (keep ca.key offline; only ca.crt goes to the processes).
# - <svc>.crt, <svc>.key for scheduler, coordinator, result-store, worker, console, and client (the
#   SDK and CLI): EC P-256, valid for TLS servers and clients, names <svc>, graflow-<svc>,
#   graflow-<svc>.graflow.svc, localhost and 127.0.0.1 (the container health checks dial it).
# - tokens/<role>: one random token per role (service, worker, client, admin, viewer).
# - bus.key: the bus signing key, `<key id>:<hex secret>` (docs/security.md, "Integrity on the bus").
# - redis.crt, redis.key: Redis' TLS certificate (names redis, graflow-redis..., and the Redis
#   Cluster's of deploy/k8s-cluster: graflow-redis-cluster and its pods' *.graflow-redis-cluster...), and
#   redis-users/<user>: the password of each Redis ACL user (default: the operators', scheduler,
#   coordinator, result-store, worker; docs/security.md, "Redis").
# - <svc>.env: GRAFLOW_<SVC>_AUTH_TOKENS (every role's `<role>:<sha256 hex>`: what the server
#   accepts) and GRAFLOW_<SVC>_AUTH_TOKEN (what the process sends: the worker's is the worker
#   token, the services' the service token); for the scheduler, the coordinator and the worker
#   also GRAFLOW_<SVC>_SIGNING_KEYS; GRAFLOW_<SVC>_REDIS_URL, its own Redis user over TLS to the
#   host `redis` (compose; the Kubernetes manifests set their own); client.env:
#   GRAFLOW_CLIENT_AUTH_TOKEN (admin).
set -euo pipefail

dir=${1:-"$(dirname "$0")/secrets"}
days=${GRAFLOW_CERT_DAYS:-365}
mkdir -p "$dir/tokens" "$dir/redis-users"
umask 077
cd "$dir"

if [[ ! -f ca.crt ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj /CN=graflow-ca -keyout ca.key -out ca.crt 2>/dev/null
fi

for name in scheduler coordinator result-store worker console client redis; do
  [[ -f $name.crt ]] && continue
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$name.key" -out "$name.csr" 2>/dev/null
  sans="DNS:$name,DNS:graflow-$name,DNS:graflow-$name.graflow.svc,DNS:localhost,IP:127.0.0.1"
  if [[ $name == redis ]]; then  # the Redis Cluster's service and each node's announced name
    sans+=",DNS:graflow-redis-cluster,DNS:graflow-redis-cluster.graflow.svc"
    sans+=",DNS:*.graflow-redis-cluster,DNS:*.graflow-redis-cluster.graflow.svc"
  fi
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -out "$name.crt" 2>/dev/null \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$sans")
  rm "$name.csr"
done

for role in service worker client admin viewer; do
  [[ -f tokens/$role ]] || openssl rand -hex 32 | tr -d '\n' > "tokens/$role"
done
for user in default scheduler coordinator result-store worker; do
  [[ -f redis-users/$user ]] || openssl rand -hex 32 | tr -d '\n' > "redis-users/$user"
done
redis_url() { printf 'rediss://%s:%s@redis:6379/0?ssl_ca_certs=/run/secrets/ca.crt' "$1" "$(cat "redis-users/$1")"; }
[[ -f bus.key ]] || printf 'bus-%s:%s' "$(date +%Y%m%d)" "$(openssl rand -hex 32)" > bus.key
hash() { printf '%s' "$(cat "tokens/$1")" | sha256sum | cut -d' ' -f1; }
accepted=$(for role in service worker client admin viewer; do printf '%s:%s,' "$role" "$(hash "$role")"; done)

for svc in scheduler coordinator result-store; do
  prefix="GRAFLOW_$(echo "$svc" | tr 'a-z-' 'A-Z_')_"
  printf '%sAUTH_TOKENS=%s\n%sAUTH_TOKEN=%s\n' "$prefix" "${accepted%,}" "$prefix" "$(cat tokens/service)" > "$svc.env"
  [[ $svc == result-store ]] || printf '%sSIGNING_KEYS=%s\n' "$prefix" "$(cat bus.key)" >> "$svc.env"
  printf '%sREDIS_URL=%s\n' "$prefix" "$(redis_url "$svc")" >> "$svc.env"
done
printf 'GRAFLOW_WORKER_AUTH_TOKEN=%s\nGRAFLOW_WORKER_SIGNING_KEYS=%s\nGRAFLOW_WORKER_REDIS_URL=%s\n' \
  "$(cat tokens/worker)" "$(cat bus.key)" "$(redis_url worker)" > worker.env
printf 'GRAFLOW_CLIENT_AUTH_TOKEN=%s\n' "$(cat tokens/admin)" > client.env
# The console has no token of its own (people sign in with theirs): only the Fernet key of its
# session cookies (url-safe base64 of 32 bytes), shared by its replicas.
[[ -f console.env ]] || printf 'GRAFLOW_CONSOLE_SESSION_KEY=%s\n' "$(openssl rand 32 | base64 | tr '+/' '-_')" > console.env
# The containers run as uid 10001: compose bind-mounts these files as they are.
chmod 644 ./*.crt ./*.key ./*.env redis-users/*
chmod 755 redis-users  # read by redis-server (uid 999) in its container
chmod 600 ca.key bus.key
echo "secrets written to $(pwd)"
