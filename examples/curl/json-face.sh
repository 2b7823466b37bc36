#!/bin/sh
# dispatcher-gateway's JSON face with curl alone: dispatch an email, follow the job on
# Server-Sent Events to its end, read it back, then subscribe, break off after the first event
# and resume from its id (SSE's Last-Event-ID is the cursor).
#
#   GATEWAY_HTTP_URL=http://127.0.0.1:8080 examples/curl/json-face.sh     (make run's gateway)
#   DISPATCHER_GATEWAY_TOKEN=dgw_... GATEWAY_HTTP_URL=https://host:8080 CURL_CA=ca.pem ...
#
# Each line it prints is one fact: "dispatched JOB STATE", "watch ID TYPE", "watch status CODE",
# "job JOB STATE LAST_EVENT", "subscribe ID TYPE", "resumed ID TYPE", "error ...", "done".
set -eu

BASE=${GATEWAY_HTTP_URL:-http://127.0.0.1:8080}
API="$BASE/dispatcher.gateway.v1.DispatchService"

# One call: the request as JSON in, the answer as JSON out; an error's body is
# google.rpc.Status as JSON ({"code", "status", "message", "details"}) on an HTTP error status.
call() {
  method=$1
  shift
  set -- -sS -H 'content-type: application/json' "$@"
  [ -n "${DISPATCHER_GATEWAY_TOKEN:-}" ] && set -- "$@" -H "authorization: Bearer $DISPATCHER_GATEWAY_TOKEN"
  [ -n "${CURL_CA:-}" ] && set -- "$@" --cacert "$CURL_CA"
  curl "$@" "$API/$method"
}

# A string field of a one-line JSON answer (protobuf's JSON: "name": "value").
field() {
  sed -n "s/.*\"$1\": \"\([^\"]*\)\".*/\1/p" | head -n 1
}

answer=$(call Dispatch --fail-with-body -d '{
  "service": "SERVICE_EMAIL",
  "template": {"id": 1},
  "email": {"sender": {"email": "noreply@example.com"}, "to": [{"email": "ada@example.com"}],
            "subject": "Hello from curl"},
  "metadata": {"example": "curl"}
}') || { echo "error $answer"; exit 1; }
job=$(echo "$answer" | field jobId)
echo "dispatched $job $(echo "$answer" | field state)"

# WatchJob as Server-Sent Events: "id: CURSOR" and "data: {JobEvent}" per event, and one last
# "event: status" when the stream ends (code 0 here: it ended after the job's terminal event).
call WatchJob -N -d "{\"jobId\": \"$job\"}" | while IFS= read -r line; do
  case $line in
    "id: "*) id=${line#id: } ;;
    "event: status") status=1 ;;
    "data: "*)
      if [ "${status:-}" ]; then
        echo "watch status $(echo "$line" | field status)"
      else
        echo "watch $id $(echo "$line" | field type)"
      fi ;;
  esac
done

answer=$(call GetJob --fail-with-body -d "{\"jobId\": \"$job\"}")
echo "job $job $(echo "$answer" | field state) $(echo "$answer" | field lastEvent)"

# Subscribe never ends by itself: a client hangs up when it has what it wants. Each stream runs
# in the background into a pipe, and is ended (curl killed) once read far enough.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkfifo "$tmp/first" "$tmp/resumed"

call Subscribe -N -d "{\"jobIds\": [\"$job\"]}" >"$tmp/first" 2>/dev/null &
stream=$!
first=$(sed -n '/^id: /{s/^id: //p;q;}' <"$tmp/first")
kill "$stream" 2>/dev/null || true
wait "$stream" 2>/dev/null || true
echo "subscribe $first"

# Reconnect with Last-Event-ID: every event after it, none before, none twice; stop at the end.
call Subscribe -N -H "Last-Event-ID: $first" -d "{\"jobIds\": [\"$job\"]}" >"$tmp/resumed" 2>/dev/null &
stream=$!
while IFS= read -r line; do
  case $line in
    "id: "*) id=${line#id: } ;;
    "data: "*)
      echo "resumed $id $(echo "$line" | field type)"
      case $line in *'"terminal": true'*) break ;; esac ;;
  esac
done <"$tmp/resumed"
kill "$stream" 2>/dev/null || true
wait "$stream" 2>/dev/null || true
echo done
