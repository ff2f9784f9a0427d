#!/bin/bash
# The cron script a user would write instead of ibreports: OpenSSH sftp, gpg -d per file, cp.
# usage: handwritten.sh PORT USER KEY KNOWN_HOSTS BATCH_FILE GNUPGHOME PASSPHRASE_FILE STAGING DEST
# BATCH_FILE is an sftp batch (e.g. "get /remote/dir/* STAGING/"). Prints phase times to stderr.
set -euo pipefail
port=$1 user=$2 key=$3 known_hosts=$4 batch=$5 gnupghome=$6 passfile=$7 staging=$8 dest=$9
now() { date +%s.%N; }
t0=$(now)
sftp -q -b "$batch" -P "$port" -i "$key" -F /dev/null -o IdentitiesOnly=yes -o BatchMode=yes \
  -o UserKnownHostsFile="$known_hosts" -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes \
  "$user@127.0.0.1" >/dev/null
t1=$(now)
mkdir -p "$staging/plain"
for f in "$staging"/*.pgp; do
  name=$(basename "$f" .pgp)
  gpg --batch --quiet --yes --homedir "$gnupghome" --pinentry-mode loopback \
    --passphrase-file "$passfile" --output "$staging/plain/$name" --decrypt "$f"
done
t2=$(now)
cp "$staging"/plain/* "$dest"/
t3=$(now)
awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" 'BEGIN { printf "phases download=%.3f decrypt=%.3f copy=%.3f\n", b-a, c-b, d-c }' >&2
