#!/usr/bin/env bash
# Refuses the example password and one that is not URL-safe, then runs "$@" (if given).
#
# docker-compose pastes POSTGRES_PASSWORD into the storage URL as it is, so a character
# that means something in a URL (@ : / ? # % and the like) would silently change the
# host or the database the workers reach: only A-Z a-z 0-9 . _ ~ - are accepted. The
# postgres service runs this before its own entrypoint, so a database is never
# initialised with the example password; dm-tune's entrypoint runs it too.
set -euo pipefail

example="change-me"  # docker/.env.example's value
password="${POSTGRES_PASSWORD-}"
if [[ -z "$password" ]]; then
  echo "dm-tune: POSTGRES_PASSWORD is empty; set it in docker/.env (letters, digits and . _ ~ - only)" >&2
  exit 2
fi
if [[ "$password" == "$example" ]]; then
  echo "dm-tune: POSTGRES_PASSWORD is still the example '$example'; set your own in docker/.env (letters, digits and . _ ~ - only)" >&2
  exit 2
fi
if [[ ! "$password" =~ ^[A-Za-z0-9._~-]+$ ]]; then
  echo "dm-tune: POSTGRES_PASSWORD must be URL-safe (letters, digits and . _ ~ - only): it is pasted into the storage URL as it is" >&2
  exit 2
fi
if [[ $# -gt 0 ]]; then
  exec "$@"
fi
