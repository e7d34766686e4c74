#!/usr/bin/env bash
# `make run`: Portcullis in the background, Envoy in the foreground on the
# rendered front proxy; Portcullis is stopped when Envoy exits (Ctrl-C).
# Expects the variables the Makefile exports.
set -euo pipefail

: "${PORTCULLIS_BIN:?}" "${ENVOY:?}" "${ENVOY_CONFIG:?}" "${POLICIES:?}"
: "${PORTCULLIS_PORT:?}" "${LISTEN_PORT:?}" "${ADMIN_PORT:?}" "${PORTCULLIS_DEMO_SECRET:?}"
: "${API_PORT:=9292}" "${CONSOLE_PORT:=9293}"

"$PORTCULLIS_BIN" serve --policies "$POLICIES" --listen "127.0.0.1:$PORTCULLIS_PORT" \
    --api-listen "127.0.0.1:$API_PORT" --console-listen "127.0.0.1:$CONSOLE_PORT" \
    --log-allow-rate 1 &
portcullis_pid=$!
stop_portcullis() {
    if kill -0 "$portcullis_pid" 2>/dev/null; then
        kill -TERM "$portcullis_pid" 2>/dev/null || true
        wait "$portcullis_pid" 2>/dev/null || true
    fi
}
trap stop_portcullis EXIT

# Wait (at most 10 s) until Portcullis accepts connections.
for _ in $(seq 100); do
    if ! kill -0 "$portcullis_pid" 2>/dev/null; then
        echo "run: portcullis exited during start-up" >&2
        exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORTCULLIS_PORT") 2>/dev/null; then
        break
    fi
    sleep 0.1
done

# The console's sign-in: a token of the demo issuer for the demo caller
# `demo-console` (policies/callers.yaml), minted for this run and never
# written to a file.
console_token=$("$PORTCULLIS_BIN" token --policies "$POLICIES" --issuer demo-idp \
    --subject demo-console --ttl 28800)

cat >&2 <<MSG

  Portcullis demo (secret from PORTCULLIS_DEMO_SECRET: a demo value, not for production)
    front proxy   http://127.0.0.1:$LISTEN_PORT   (Envoy admin http://127.0.0.1:$ADMIN_PORT)
    AuthZEN API   http://127.0.0.1:$API_PORT/access/v1/evaluation   (README, "Ask from a service")
    console       http://127.0.0.1:$CONSOLE_PORT/   (README, "Console"); sign in with this demo token:
      $console_token
    (every allow is logged here: --log-allow-rate 1; production samples allows)
    try:
      curl -i http://127.0.0.1:$LISTEN_PORT/healthz
      TOKEN=\$(make -s token SUBJECT=alice)
      curl -i -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$LISTEN_PORT/documents/1
      curl -i -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$LISTEN_PORT/documents/3
  Ctrl-C stops Envoy and Portcullis.

MSG

# Not exec: the EXIT trap must run after Envoy exits.
"$ENVOY" -c "$ENVOY_CONFIG" --disable-hot-restart --concurrency 1 -l warning
