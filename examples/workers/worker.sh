#!/usr/bin/env bash
# An example steward worker in bash, with no other tools.
#
# steward starts it with a connected Unix socket whose descriptor number is in
# STEWARD_FD. Both sides send one JSON object per line. This worker answers every job
# with a result naming itself and the payload's size; a payload containing "fail"
# makes it report a failure.
set -u
fd="$STEWARD_FD"
name="$STEWARD_POOL/$STEWARD_INSTANCE"

send() { printf '%s\n' "$1" >&"$fd"; }

send '{"type":"ready"}'
while IFS= read -r line <&"$fd"; do
  [[ $line =~ \"type\":\"([a-z]+)\" ]] || continue
  type="${BASH_REMATCH[1]}"
  [[ $type == job ]] || continue
  [[ $line =~ \"id\":([0-9]+) ]] || continue
  id="${BASH_REMATCH[1]}"
  payload="${line#*\"payload\":}"
  payload="${payload%,\"deadline\":*}"
  echo "job $id on $name"
  if [[ $payload == *fail* ]]; then
    send "{\"type\":\"fail\",\"id\":$id,\"error\":\"payload asked to fail\",\"retry\":false}"
  else
    send "{\"type\":\"done\",\"id\":$id,\"result\":{\"worker\":\"$name\",\"shell\":\"bash\",\"payload_bytes\":${#payload}}}"
  fi
done
