#!/usr/bin/env bash
# The apiserver→kubelet path end to end, in docker-compose.yml's networks:
#
#   1. builds the binaries and the FROM-scratch images (docker/build-images.sh);
#   2. `docker-compose up -d`: a one-shot service generates the PKI, then the proxy-server, the
#      apiserver container, and per node an agent and a kubelet stand-in start;
#   3. waits until every agent is connected to the proxy-server;
#   4. from the apiserver container, through the tunnel, against EVERY node: logs --tail 3,
#      logs -f (interrupted after a few seconds), exec with an exit status, exec with stdin,
#      and a port-forward to an HTTP server on the node;
#   5. shows that the kubelet's certificate is verified end to end (a wrong expected name is
#      refused) and that a direct connection from the apiserver container to each kubelet fails;
#   6. kills node2's agent during `logs -f` (the CLI must fail promptly, not hang), restarts it
#      and reaches node2 again;
#   7. `docker-compose down -v` (unless KEEP=1).
#
# Exits 0 only if every check passed. Needs a running Docker engine and docker-compose; nothing
# is pulled from a registry.
#
# Environment:
#   BUILD_PROFILE=release|debug  cargo profile for the images (default release; CI uses debug)
#   SKIP_BUILD=1                 use the images already built (skip cargo and docker build)
#   KEEP=1                       leave the containers running at the end (stop them with
#                                `docker-compose down -v`)
#   READY_TIMEOUT=90             seconds to wait for the agents
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# Node name → kubelet address, as in docker-compose.yml (the agents announce these IPs).
NODES=(node1 node2)
declare -A KUBELET_IP=([node1]=172.28.1.10 [node2]=172.28.2.10)
declare -A AGENT_IP=([node1]=172.28.1.2 [node2]=172.28.2.2)
POD=default/demo
# The kubelet API names a container; the stand-in serves any name.
CONTAINER=app
# Seconds `logs -f` streams before it is interrupted; the stand-in writes a line a second.
FOLLOW_SECONDS=4
READY_TIMEOUT="${READY_TIMEOUT:-90}"

compose=(docker-compose -f "$repo/docker-compose.yml")
started=$(date +%s)
failures=()
passes=0

if [[ -t 1 ]]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
elapsed() { echo "$(($(date +%s) - started))s"; }
pass() { passes=$((passes + 1)); printf '  PASS  %s\n' "$*"; }
fail() { failures+=("$*"); printf '  FAIL  %s\n' "$*"; }
indent() { sed 's/^/        | /'; }

# konnectivity-kubectl in the apiserver container; the egress selector configuration and the
# kubelet CA/client certificate come from the container's environment (docker-compose.yml).
# It inherits standard input: callers redirect it from /dev/null, except for exec -i.
kubectl_to() {
    local node="$1"
    shift
    "${compose[@]}" exec -T apiserver konnectivity-kubectl --node "${KUBELET_IP[$node]}" "$@"
}
# Every other `docker-compose exec` gets /dev/null as standard input, so that it never reads
# the terminal the demo runs in.
in_container() {
    "${compose[@]}" exec -T "$@" </dev/null
}

cleanup() {
    local status=$?
    if ((status != 0)) || ((${#failures[@]})); then
        say "container logs (last 40 lines each)"
        "${compose[@]}" logs --no-color --tail 40 2>&1 || true
    fi
    if [[ "${KEEP:-0}" == 1 ]]; then
        say "KEEP=1: left running. Try:"
        echo "  docker-compose exec apiserver konnectivity-kubectl --node ${KUBELET_IP[node1]} logs -f $POD -c $CONTAINER"
        echo "  docker-compose exec apiserver konnectivity-kubectl --node ${KUBELET_IP[node2]} exec -i $POD -c $CONTAINER -- sh"
        echo "  docker-compose down -v    # when done"
    else
        say "docker-compose down -v"
        "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    exit "$status"
}

command -v docker >/dev/null 2>&1 || { echo "demo.sh: docker is not installed" >&2; exit 1; }
command -v docker-compose >/dev/null 2>&1 || { echo "demo.sh: docker-compose is not installed" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "demo.sh: the Docker engine is not reachable (is dockerd running?)" >&2; exit 1; }

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    say "build binaries and images ($(elapsed))"
    "$repo/docker/build-images.sh"
fi

say "docker-compose up ($(elapsed))"
# Leftovers of an interrupted run would keep the fixed subnets busy.
"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
trap cleanup EXIT
"${compose[@]}" up -d 2>&1 | indent
"${compose[@]}" logs --no-color certs 2>&1 | grep -v '^Attaching' | indent

# The agent image has no shell; its health port is probed from the node's own container, the
# only other container on the node network.
wait_agent() {
    local node="$1" deadline=$(($(date +%s) + READY_TIMEOUT))
    until in_container "$node" wget -q -O /dev/null "http://${AGENT_IP[$node]}:8093/readyz" 2>/dev/null; do
        if (($(date +%s) > deadline)); then
            fail "$node: agent not connected to the proxy-server after ${READY_TIMEOUT}s"
            exit 1
        fi
        sleep 1
    done
}

say "wait for the agents to connect to the proxy-server ($(elapsed))"
for node in "${NODES[@]}"; do
    wait_agent "$node"
    pass "$node: agent connected ($(elapsed))"
done

for node in "${NODES[@]}"; do
    ip="${KUBELET_IP[$node]}"
    say "$node: kubelet $ip:10250 through the tunnel ($(elapsed))"

    # logs --tail 3
    if out=$(kubectl_to "$node" logs --tail 3 "$POD" -c "$CONTAINER" 2>&1 </dev/null); then
        printf '%s\n' "$out" | indent
        lines=$(printf '%s\n' "$out" | grep -c . || true)
        if ((lines == 3)); then pass "$node: logs --tail 3 (3 lines)"; else fail "$node: logs --tail 3 printed $lines lines"; fi
    else
        printf '%s\n' "$out" | indent
        fail "$node: logs --tail 3 failed"
    fi

    # logs -f, interrupted (SIGINT, as Ctrl-C) after FOLLOW_SECONDS.
    t0=$(date +%s)
    out=$(in_container apiserver timeout -s INT "$FOLLOW_SECONDS" \
        konnectivity-kubectl --node "$ip" logs -f --tail 1 "$POD" -c "$CONTAINER" 2>&1 || true)
    took=$(($(date +%s) - t0))
    printf '%s\n' "$out" | tail -n 5 | indent
    lines=$(printf '%s\n' "$out" | grep -c . || true)
    if ((lines >= 3 && took < FOLLOW_SECONDS + 10)); then
        pass "$node: logs -f streamed $lines lines in ${FOLLOW_SECONDS}s and stopped on SIGINT"
    else
        fail "$node: logs -f streamed $lines lines, returned after ${took}s"
    fi

    # exec: output and exit status travel back.
    set +e
    # shellcheck disable=SC2016 # $(hostname) is expanded by the shell on the node
    out=$(kubectl_to "$node" exec "$POD" -c "$CONTAINER" -- sh -c 'echo hello from $(hostname); echo to stderr >&2; exit 3' 2>&1 </dev/null)
    status=$?
    set -e
    printf '%s\n' "$out" | indent
    if ((status == 3)) && [[ "$out" == *"hello from $node"* && "$out" == *"to stderr"* ]]; then
        pass "$node: exec printed 'hello from $node' and exited 3"
    else
        fail "$node: exec exited $status (want 3) with output: $out"
    fi

    # exec -i: 256 KiB of stdin reach the node's process intact.
    payload=$(mktemp)
    head -c 262144 /dev/urandom >"$payload"
    want=$(sha256sum <"$payload" | cut -d' ' -f1)
    set +e
    got=$(kubectl_to "$node" exec -i "$POD" -c "$CONTAINER" -- sh -c 'sha256sum | cut -d" " -f1' <"$payload" 2>&1)
    status=$?
    set -e
    rm -f "$payload"
    echo "sent sha256 $want, node computed $got" | indent
    if ((status == 0)) && [[ "$got" == "$want" ]]; then
        pass "$node: exec -i carried 256 KiB of stdin intact"
    else
        fail "$node: exec -i exited $status, node saw $got, want $want"
    fi

    # port-forward 127.0.0.1:18080 (apiserver container) → the node's httpd on 8080.
    set +e
    # shellcheck disable=SC2016 # the script runs in the apiserver container
    out=$(in_container apiserver sh -c '
        konnectivity-kubectl --node "$1" port-forward "$2" 18080:8080 >/tmp/pf.log 2>&1 &
        pf=$!
        body=""
        for i in $(seq 50); do
            body=$(wget -q -O - http://127.0.0.1:18080/ 2>/dev/null) && break
            sleep 0.2
        done
        again=$(wget -q -O - http://127.0.0.1:18080/ 2>/dev/null)
        kill -INT "$pf" 2>/dev/null
        wait "$pf"
        echo "first:  $body"
        echo "second: $again"
        echo "port-forward log:"; cat /tmp/pf.log
        [ -n "$body" ] && [ "$body" = "$again" ]' sh "$ip" "$POD" 2>&1)
    status=$?
    set -e
    printf '%s\n' "$out" | indent
    if ((status == 0)) && [[ "$out" == *"first:  hello from the demo pod on $node"* ]]; then
        pass "$node: port-forward 18080:8080 reached the node's HTTP server (two connections)"
    else
        fail "$node: port-forward did not reach the node's HTTP server"
    fi
done

say "the kubelet's certificate is verified end to end, through the tunnel ($(elapsed))"
# node1's kubelet certificate is valid for node1 and 172.28.1.10 only; asking for another name
# must fail the TLS handshake that runs inside the tunnel.
set +e
out=$(kubectl_to node1 --tls-server-name node2 logs --tail 1 "$POD" -c "$CONTAINER" 2>&1 </dev/null)
status=$?
set -e
printf '%s\n' "$out" | indent
if ((status != 0)) && [[ "$out" == *"not valid for node2"* ]]; then
    pass "node1: a kubelet certificate that does not match the expected name is refused"
else
    fail "node1: a kubelet certificate for the wrong name was not refused as such (exit $status)"
fi

say "direct path from the apiserver container ($(elapsed))"
# All attempts at once: a blocked connect only fails when its timeout expires (busybox nc: 3 s;
# konnectivity-kubectl --direct: its 30 s dial timeout).
direct_dir=$(mktemp -d)
for node in "${NODES[@]}"; do
    ip="${KUBELET_IP[$node]}"
    (
        set +e
        in_container apiserver nc -w 3 "$ip" 10250 >"$direct_dir/$node.nc" 2>&1
        echo $? >"$direct_dir/$node.nc.rc"
        # The container's environment names the egress configuration; --direct excludes it.
        in_container apiserver env -u KONNECTIVITY_EGRESS_SELECTOR_CONFIG_FILE \
            timeout 60 konnectivity-kubectl --direct --node "$ip" logs --tail 1 "$POD" -c "$CONTAINER" \
            >"$direct_dir/$node.kubectl" 2>&1
        echo $? >"$direct_dir/$node.kubectl.rc"
    ) &
done
wait
# A network failure, not a usage error or a TLS/HTTP refusal, is what proves the path is blocked.
network_error() { [[ "$1" == *"unreachable"* || "$1" == *"timed out"* || "$1" == *"did not complete"* || "$1" == *"refused"* ]]; }
for node in "${NODES[@]}"; do
    ip="${KUBELET_IP[$node]}"
    out=$(cat "$direct_dir/$node.nc")
    status=$(cat "$direct_dir/$node.nc.rc")
    echo "nc -w 3 $ip 10250: exit $status: $out" | indent
    if ((status != 0)) && network_error "$out"; then
        pass "$node: direct TCP to $ip:10250 fails: direct path blocked (as expected)"
    else
        fail "$node: direct TCP to $ip:10250 did not fail as a network error"
    fi
    out=$(cat "$direct_dir/$node.kubectl")
    status=$(cat "$direct_dir/$node.kubectl.rc")
    echo "konnectivity-kubectl --direct --node $ip logs: exit $status" | indent
    printf '%s\n' "$out" | indent
    if ((status != 0)) && network_error "$out"; then
        pass "$node: konnectivity-kubectl --direct fails: direct path blocked (as expected)"
    else
        fail "$node: konnectivity-kubectl --direct did not fail with a network error"
    fi
done
rm -rf "$direct_dir"

say "kill node2's agent in the middle of logs -f ($(elapsed))"
follow_log=$(mktemp)
(
    # shellcheck disable=SC2016 # the script runs in the apiserver container
    in_container apiserver sh -c 'start=$(date +%s)
        timeout -s INT 60 konnectivity-kubectl --node "$1" logs -f --tail 1 "$2" -c "$3"
        echo "konnectivity-kubectl exited $? after $(($(date +%s) - start))s"' \
        sh "${KUBELET_IP[node2]}" "$POD" "$CONTAINER" >"$follow_log" 2>&1
) &
follower=$!
sleep 3
"${compose[@]}" kill node2-agent 2>&1 | indent
wait "$follower" || true
indent <"$follow_log"
took=$(sed -n 's/.*exited [0-9]* after \([0-9]*\)s.*/\1/p' "$follow_log")
code=$(sed -n 's/.*exited \([0-9]*\) after.*/\1/p' "$follow_log")
# It must have been streaming (lines arrived) and then fail with a message, well before the
# 60 s timeout would have interrupted a hung stream.
streamed=$(grep -cv -e '^error' -e '^konnectivity-kubectl exited' "$follow_log" || true)
errored=$(grep -c '^error' "$follow_log" || true)
rm -f "$follow_log"
if [[ -n "$took" && "$code" != 0 ]] && ((streamed >= 2 && errored >= 1 && took < 20)); then
    pass "node2: logs -f ended with an error ${took}s after it started (agent killed at 3s) instead of hanging"
else
    fail "node2: logs -f did not stream and then end with an error after the agent was killed (exit ${code:-?} after ${took:-?}s, $streamed lines)"
fi
"${compose[@]}" start node2-agent 2>&1 | indent
wait_agent node2
if out=$(kubectl_to node2 logs --tail 1 "$POD" -c "$CONTAINER" 2>&1 </dev/null); then
    printf '%s\n' "$out" | indent
    pass "node2: agent restarted and reconnected; the kubelet is reachable again ($(elapsed))"
else
    printf '%s\n' "$out" | indent
    fail "node2: kubelet not reachable after the agent restarted"
fi

say "summary ($(elapsed))"
echo "$passes passed, ${#failures[@]} failed"
if ((${#failures[@]})); then
    printf '  FAIL  %s\n' "${failures[@]}"
    exit 1
fi
