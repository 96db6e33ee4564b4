#!/bin/sh
# Render the ACL file Redis loads (--aclfile) from the template users.acl: each placeholder
# "<sha256:USER>" becomes the SHA-256 of USER's password, read from the file "$SECRETS/USER" (a
# final newline is not part of the password). Neither the template nor the result holds a
# password. Runs with the redis image's /bin/sh, sed and sha256sum (compose and Kubernetes run it
# before redis-server); `python -m graflow_runtime.redis_acl --passwords-dir DIR` prints the same.
#
#   render-acl.sh TEMPLATE SECRETS_DIR OUTPUT
set -eu
template=$1 secrets=$2 output=$3
umask 077
cp "$template" "$output.tmp"
for user in $(grep -o '<sha256:[^>]*>' "$template" | sed 's/<sha256:\(.*\)>/\1/' | sort -u); do
  if [ ! -s "$secrets/$user" ]; then
    echo "render-acl.sh: no password for the Redis user $user ($secrets/$user)" >&2
    rm -f "$output.tmp"
    exit 1
  fi
  hash=$(printf '%s' "$(cat "$secrets/$user")" | sha256sum | cut -d' ' -f1)
  sed -i "s/<sha256:$user>/$hash/" "$output.tmp"
done
mv "$output.tmp" "$output"
