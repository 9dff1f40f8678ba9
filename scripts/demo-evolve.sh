#!/bin/bash
# A Peagen-shaped evolve loop on the fabric: `mutate` tasks ask an LLM for a
# faster variant of the best program so far, `execute` tasks time each
# candidate in the sandbox, the best result is shown every generation. The
# LLM backend is rate-limited (requests per minute small enough to see) and
# the workflow has a token budget: when it runs out, the remaining mutate
# tasks finish as `skip` (budget_exhausted) and the loop stops.
#
#   DEMO_KIND=evolve scripts/demo.sh      or      scripts/demo-evolve.sh   (root)
#
# LLM: by default the LOCAL STAND-IN scripts/llm-standin.py (not a model: it
# answers with seeded sorting-algorithm variants, some faster, some slower,
# some broken). A real OpenAI-compatible endpoint instead:
#   PEAGEN_DEMO_LLM_URL=https://api.example.com/v1  PEAGEN_DEMO_LLM_MODEL=name
#   and PEAGEN_DEMO_LLM_KEY_FILE=/path/to/key or PEAGEN_DEMO_LLM_KEY_ENV=VARNAME
# Either way the key reaches the workers only as a systemd credential
# (LoadCredential=), never through a payload, the config file or the
# environment, and the demo greps results and journals for it at the end.
#
# Env: EVOLVE_GENERATIONS (8), EVOLVE_CHILDREN (4 mutate tasks a generation),
# EVOLVE_BUDGET_TOKENS (workflow budget, 6000), EVOLVE_MAX_TOKENS (per task,
# 300), EVOLVE_RPM (requests per minute, 30), EVOLVE_BURST (2), EVOLVE_SEED
# (stand-in seed, 7), EVOLVE_429_SHARE (stand-in 429 share, 0.1),
# CARGO_TARGET_DIR, DEMO_PROFILE (debug|release).
# EVOLVE_DIRECT_LLM=1 (debugging only): this script asks the LLM itself and
# only the execute half runs on the fabric (no mutate tasks, so no fabric
# rate limit or budget): for builds without the mutate handler.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
PROFILE=${DEMO_PROFILE:-debug}
GENS=${EVOLVE_GENERATIONS:-8}; KIDS=${EVOLVE_CHILDREN:-4}
BUDGET=${EVOLVE_BUDGET_TOKENS:-6000}; MAXTOK=${EVOLVE_MAX_TOKENS:-300}
RPM=${EVOLVE_RPM:-30}; BURST=${EVOLVE_BURST:-2}
SEED=${EVOLVE_SEED:-7}; SHARE429=${EVOLVE_429_SHARE:-0.1}
DIRECT=${EVOLVE_DIRECT_LLM:-0}
[ "$(id -u)" = 0 ] || { echo "demo-evolve: run as root (it starts system units)" >&2; exit 1; }
for t in redis-server curl jq python3; do command -v $t >/dev/null || { echo "demo-evolve: needs $t" >&2; exit 1; }; done

demo=demo-evolve; standin_pid=
. "$here/scripts/demo-lib.sh"
demo_build
demo_systemd
mport=$(free_port)
demo_redis

# The key: a real one from the operator, or a random one the stand-in demands.
(umask 077; : > "$work/llm.key")
if [ -n "${PEAGEN_DEMO_LLM_URL:-}" ]; then
    llm_url=${PEAGEN_DEMO_LLM_URL%/}; model=${PEAGEN_DEMO_LLM_MODEL:?set PEAGEN_DEMO_LLM_MODEL with PEAGEN_DEMO_LLM_URL}
    backend=remote
    if [ -n "${PEAGEN_DEMO_LLM_KEY_FILE:-}" ]; then tr -d '\n' < "$PEAGEN_DEMO_LLM_KEY_FILE" > "$work/llm.key"
    elif [ -n "${PEAGEN_DEMO_LLM_KEY_ENV:-}" ]; then printf '%s' "${!PEAGEN_DEMO_LLM_KEY_ENV:?the variable named by PEAGEN_DEMO_LLM_KEY_ENV is empty}" > "$work/llm.key"
    else echo "demo-evolve: give PEAGEN_DEMO_LLM_KEY_FILE or PEAGEN_DEMO_LLM_KEY_ENV with PEAGEN_DEMO_LLM_URL" >&2; exit 1; fi
    echo "==> LLM: $llm_url (model $model)"
else
    backend=standin; model=standin-mutator
    python3 -c 'import secrets; print("sk-standin-" + secrets.token_hex(16), end="")' > "$work/llm.key"
    LLM_STANDIN_KEY=$(cat "$work/llm.key") python3 "$here/scripts/llm-standin.py" --port 0 \
        --port-file "$work/standin.port" --seed "$SEED" --rate-limit-share "$SHARE429" --retry-after 2 \
        > "$work/standin.log" 2>&1 &
    standin_pid=$!; extra_pids="$extra_pids $standin_pid"
    for _ in $(seq 100); do [ -s "$work/standin.port" ] && break; sleep 0.1; done
    [ -s "$work/standin.port" ] || { cat "$work/standin.log" >&2; exit 1; }
    llm_url=http://127.0.0.1:$(cat "$work/standin.port")/v1
    echo "==> LLM: LOCAL STAND-IN scripts/llm-standin.py at $llm_url (seed $SEED, answers $SHARE429 of requests with 429 + Retry-After: 2)"
fi

wf=evolve-$(date +%s)
cfg=$work/peagen.toml
cat > "$cfg" <<TOML
[redis]
url = "$url"
[metrics]
spawner-listen = "127.0.0.1:$mport"
[spawner]
warm-pool = 2
max = 4
tasks-per-worker = 1
idle-timeout-secs = 10
scale-down-window-secs = 10
[spawner.worker-unit]
exec-start = ["$prefix/bin/peagen-worker", "--config", "$prefix/peagen.toml"]
TOML
install_file "$work/llm.key" "$prefix/llm.key"
if [ "$DIRECT" != 1 ]; then
    # The key reaches the workers as the systemd credential llm-key
    # ($CREDENTIALS_DIRECTORY/llm-key). Probe first: some systemd/kernel
    # combinations (this project's test VM) give a non-root unit no access to
    # its credentials; the demo then falls back to the worker environment.
    if run_in systemd-run -q --wait --pipe -p DynamicUser=yes -p "LoadCredential=llm-key:$prefix/llm.key" \
            sh -c 'test -r "$CREDENTIALS_DIRECTORY/llm-key"' 2>/dev/null; then
        echo "==> API key: systemd credential llm-key of every worker unit (LoadCredential=)"
        key_unit="load-credential = [\"llm-key:$prefix/llm.key\"]"
        key_backend='api-key-credential = "llm-key"'
    else
        echo "==> API key: this systemd cannot hand a credential to a non-root unit here (Permission denied);"
        echo "    falling back to the workers' environment (Environment=PEAGEN_LLM_KEY=..., visible to"
        echo "    systemctl show: acceptable for the stand-in's throwaway key, not for production)"
        key_unit="environment = [\"PEAGEN_LLM_KEY=$(cat "$work/llm.key")\"]"
        key_backend='api-key-env = "PEAGEN_LLM_KEY"'
    fi
    cat >> "$cfg" <<TOML
$key_unit
[llm]
# Wait at most 2 s in the worker for a rate-limit token, then hand the task
# back to the delayed set (no attempt used).
rate-limit-max-wait-ms = 2000
[[llm.backends]]
name = "$backend"
base-url = "$llm_url"
model = "$model"
$key_backend
kinds = ["mutate"]
timeout-ms = 60000
requests-per-minute = $RPM
burst = $BURST
rate-limit-scope = "fleet"
TOML
fi
demo_install "$cfg"
ctl() { "$bin/peagenctl" --config "$cfg" "$@"; }
demo_spawnerd

if [ "$DIRECT" != 1 ]; then
    echo "==> workflow $wf: token budget $BUDGET (a mutate task reserves max_tokens=$MAXTOK + a bound of its prompt before its call)"
    ctl budget set "$wf" --tokens "$BUDGET" | sed 's/^/    /'
    echo "==> backend $backend: $RPM requests/minute, burst $BURST, shared by the fleet (scope fleet)"
else
    echo "==> EVOLVE_DIRECT_LLM=1: this script asks the LLM itself; only execute tasks run on the fabric"
fi

CTL=$bin/peagenctl CFG=$cfg WF=$wf GENS=$GENS KIDS=$KIDS MAXTOK=$MAXTOK DIRECT=$DIRECT \
LLM_URL=$llm_url MODEL=$model KEYFILE=$work/llm.key IDS=$work/ids python3 - <<'PY'
import json, os, re, subprocess, sys, time, urllib.request

E = os.environ
CTL = [E["CTL"], "--config", E["CFG"]]
GENS, KIDS, MAXTOK = int(E["GENS"]), int(E["KIDS"]), int(E["MAXTOK"])
DIRECT = E["DIRECT"] == "1"

SEED_PROGRAM = '''def solve(xs):
    # approach: bubble sort
    a = list(xs)
    n = len(a)
    for i in range(n):
        for j in range(n - 1):
            if a[j] > a[j + 1]:
                a[j], a[j + 1] = a[j + 1], a[j]
    return a
'''
# Appended to every candidate; the sandbox times evaluate() only (the data is
# built when the module loads), and the result says whether it sorted.
HARNESS = '''

# --- evaluation harness (demo-evolve.sh), not part of the candidate ---
import random as _random
_rng = _random.Random(20240601)
_DATA = [_rng.randint(0, 10**6) for _ in range(1500)]
_WANT = sorted(_DATA)
def evaluate():
    return {"correct": solve(list(_DATA)) == _WANT}
'''
SYSTEM = ("You improve Python programs. Answer with one complete program in a ```python code block. "
          "It must define solve(xs), which returns the list xs sorted ascending, using only the "
          "standard library. Faster is better.")


def push(tasks):
    with open(E["IDS"], "a") as f:
        f.write("".join(t["id"] + "\n" for t in tasks))
    subprocess.run(CTL + ["push", "--file", "-", "--json"], check=True, text=True,
                   input="".join(json.dumps(t) + "\n" for t in tasks), stdout=subprocess.DEVNULL)


def result(tid):
    r = subprocess.run(CTL + ["task", "get", tid, "--json"], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


def collect(ids, t0, show, limit=300):
    """Poll until every id has its result; call show(id, rec, seconds) as each lands."""
    left, out = list(ids), {}
    while left:
        for tid in list(left):
            rec = result(tid)
            if rec is not None:
                out[tid] = rec
                left.remove(tid)
                show(tid, rec, time.monotonic() - t0)
        if left:
            if time.monotonic() - t0 > limit:
                sys.exit(f"demo-evolve: no result for {left} after {limit} s")
            time.sleep(0.3)
    return out


def code_of(text):
    m = re.findall(r"```(?:python|py)?[ \t]*\n(.*?)```", text or "", re.S)
    return m[-1] if m else None


def approach(code):
    m = re.search(r"#\s*approach:\s*([^\n#]+)", code or "")
    return m.group(1).strip() if m else "candidate"


def ask_direct(messages):
    """EVOLVE_DIRECT_LLM=1 only: one chat completion from this script."""
    key = open(E["KEYFILE"]).read().strip()
    body = json.dumps({"model": E["MODEL"], "messages": messages, "max_tokens": MAXTOK}).encode()
    for _ in range(10):
        req = urllib.request.Request(E["LLM_URL"] + "/chat/completions", body, {
            "Content-Type": "application/json", "Authorization": "Bearer " + key})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                d = json.load(r)
            return {"status": "ok", "data": {"text": d["choices"][0]["message"]["content"],
                                             "usage": d.get("usage", {})}}
        except urllib.error.HTTPError as e:
            if e.code != 429:
                return {"status": "error", "data": {"msg": f"HTTP {e.code}"}}
            time.sleep(float(e.headers.get("Retry-After") or 1))
    return {"status": "error", "data": {"msg": "rate-limited 10 times"}}


best = None  # (speed_ms, label, code)
parent, parent_label = SEED_PROGRAM, "bubble sort (seed program)"
used = 0
for g in range(1, GENS + 1):
    print(f"==> generation {g}: parent = {parent_label}", flush=True)
    msgs = [[{"role": "system", "content": SYSTEM},
             {"role": "user", "content": f"Generation {g}, candidate {c}. The current best program:\n"
                                         f"```python\n{parent}```\nWrite a faster variant."}]
            for c in range(1, KIDS + 1)]
    t0 = time.monotonic()
    ids = [f"{E['WF']}-g{g}-m{c}" for c in range(1, KIDS + 1)]

    def show_mutate(tid, rec, dt):
        d = rec.get("data") or {}
        st = rec.get("status")
        if st == "ok":
            u = d.get("usage") or {}
            what = approach(code_of(d.get("text")))
            print(f"    mutate  {tid[-5:]:>6} +{dt:5.1f}s ok    {u.get('total_tokens', '?'):>4} tokens"
                  f"  attempts {rec.get('attempts', 1)}  -> {what}", flush=True)
        elif st == "skip":
            print(f"    mutate  {tid[-5:]:>6} +{dt:5.1f}s skip  {d.get('reason')} (no LLM call made)", flush=True)
        else:
            print(f"    mutate  {tid[-5:]:>6} +{dt:5.1f}s {st}  {d.get('msg', '')}"[:160], flush=True)

    if DIRECT:
        muts = {}
        for tid, m in zip(ids, msgs):
            muts[tid] = ask_direct(m)
            show_mutate(tid, muts[tid], time.monotonic() - t0)
    else:
        push([{"kind": "mutate", "id": tid,
               "payload": {"messages": m, "max_tokens": MAXTOK, "temperature": 0.8,
                           "workflow_id": E["WF"]}}
              for tid, m in zip(ids, msgs)])
        muts = collect(ids, t0, show_mutate)
    for rec in muts.values():
        if rec.get("status") == "ok":
            used += int(((rec.get("data") or {}).get("usage") or {}).get("total_tokens") or 0)
        elif "no handler for kind" in json.dumps(rec):
            sys.exit("demo-evolve: this build has no mutate handler (see EVOLVE_DIRECT_LLM=1): "
                     + json.dumps(rec)[:300])

    cands = {}
    for tid in ids:
        rec = muts[tid]
        code = code_of((rec.get("data") or {}).get("text")) if rec.get("status") == "ok" else None
        if code is not None:
            cands[tid.replace("-m", "-e")] = code
        elif rec.get("status") == "ok":
            print(f"    {tid[-5:]}: the answer has no ```python block "
                  f"(finish_reason {(rec.get('data') or {}).get('finish_reason')}): dropped")
    if not cands:
        skips = [r for r in muts.values() if r.get("status") == "skip"]
        if skips and len(skips) == len(muts):
            reasons = sorted({(r.get("data") or {}).get("reason") for r in skips})
            print(f"==> budget stop: every mutate task of generation {g} was skipped ({', '.join(reasons)})")
            break
        print("    no candidate to evaluate in this generation")
        continue

    t1 = time.monotonic()
    push([{"kind": "execute", "id": tid, "timeout_ms": 20000,
           "payload": {"child_src": code + HARNESS, "entry_fn": "evaluate"}}
          for tid, code in cands.items()])

    def show_exec(tid, rec, dt):
        global best, parent, parent_label
        d = rec.get("data") or {}
        v = d.get("verdict") or {}
        what = approach(cands[tid])
        correct = isinstance(d.get("result"), dict) and d["result"].get("correct") is True
        if rec.get("status") == "ok" and correct:
            ms = float(d.get("speed_ms") or 0)
            label = f"{what} ({ms:.1f} ms, g{g} {tid[-2:]})"
            note = ""
            if best is None or ms < best[0]:
                best = (ms, label, cands[tid])
                note = "  <- new best"
            print(f"    execute {tid[-5:]:>6} +{dt:5.1f}s ok    {ms:9.1f} ms  {what}{note}", flush=True)
        elif rec.get("status") == "ok":
            print(f"    execute {tid[-5:]:>6} +{dt:5.1f}s WRONG result        {what}", flush=True)
        else:
            err = [l for l in (v.get("stderr") or "").splitlines() if l.strip()]
            print(f"    execute {tid[-5:]:>6} +{dt:5.1f}s {v.get('status', rec.get('status'))}"
                  f"  {what}: {err[-1] if err else d.get('msg', '')}"[:150], flush=True)

    collect(list(cands), t1, show_exec)
    if best:
        parent, parent_label = best[2], best[1]
        print(f"    best so far: {best[1]}", flush=True)
    refused = [r for r in muts.values() if r.get("status") == "skip"]
    if refused:
        # As Peagen's orchestrator does: stop once the workflow's budget no
        # longer covers a whole generation.
        print(f"==> budget stop: {len(refused)} of {KIDS} mutate tasks of generation {g} were skipped "
              f"({', '.join(sorted({(r.get('data') or {}).get('reason') for r in refused}))}); "
              "the workflow's budget no longer covers a generation")
        break
print(f"==> best program: {best[1] if best else 'none'}; LLM tokens used by completed calls: {used}")
PY

if [ "$DIRECT" != 1 ]; then
    echo "==> peagenctl budget show $wf"
    ctl budget show "$wf" | sed 's/^/    /'
fi
echo "==> LLM, budget and worker-time metrics (spawner, fleet-wide)"
sleep 6  # workers add their counters to Redis every 5 s
curl -sf "http://127.0.0.1:$mport/metrics" \
    | grep -E '^peagen_(llm_(tokens|requests|ratelimit_[a-z_]+)_total|budget_refusals_total|worker_runtime_seconds_total|handler_fail_total)' \
    | sed 's/^/    /' || echo "    (none yet)"
if [ -n "$standin_pid" ]; then
    echo "==> what the stand-in saw (requests per second; 429 = its own simulated provider limit)"
    tail -n 25 "$work/standin.log" | sed 's/^/    /'
fi
echo "==> the API key in results or worker journals?"
key=$(cat "$work/llm.key")
if { ctl queue dlq export; while read -r id; do ctl task get "$id" --json || true; done < "$work/ids"; \
     run_in journalctl --no-pager -o json -u 'peagen-worker@*' -u peagen-spawnerd 2>/dev/null; } | grep -qF -- "$key"; then
    echo "    FOUND: the key leaked" >&2; exit 1
else
    echo "    not found in $(wc -l < "$work/ids") results, the dead letters, or the journals of workers and spawner"
fi
