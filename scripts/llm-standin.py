#!/usr/bin/env python3
"""LOCAL STAND-IN for an LLM server: not a model, a scripted test double.

Speaks the OpenAI-compatible chat-completions API (POST /v1/chat/completions,
GET /v1/models) on 127.0.0.1 so the fabric's `mutate` handler, the demo and
tests can run without a real LLM. Python 3 standard library only.

  scripts/llm-standin.py --port 0 [--seed 7] [--rate-limit-share 0.2]
                         [--retry-after 2] [--delay-ms 0] [--port-file F]

- Prints `llm-standin: listening on 127.0.0.1:PORT` once bound (port 0 picks
  a free one; --port-file also writes the bare port there).
- If the environment variable named by --key-env (default
  LLM_STANDIN_KEY) is set and non-empty, every request must carry
  `Authorization: Bearer <that key>`, else 401. The key is never printed.
- --rate-limit-share F answers that share of authorised requests with 429 and
  `Retry-After: --retry-after` (chosen by a seeded generator, so a given seed
  and request order give the same answers).
- usage numbers are computed from text length (about 4 characters a token);
  when the answer is longer than max_tokens it is cut and finish_reason is
  "length", else "stop".
- Once a second it logs the requests of that second to stdout.

Answers: when the conversation contains a Python program defining
`def solve(xs)` (the demo's sorting task: return xs sorted), the answer is a
mutated variant of it inside a ```python block: a deterministic function of
--seed and the prompt text. Some variants are faster algorithms, some slower,
some broken (wrong result, exception, syntax error), as an LLM's are. Any
other prompt gets a short canned reply.
"""
import argparse
import hashlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Sorting approaches from slowest to fastest (rank = list index; measured on
# 1500 random ints: bubble ~1 s, insertion ~0.2 s, merge/quick ~5 ms, bisect and
# heapq ~0.6 ms, sorted ~0.2 ms). Each is the
# body of the answer's code block; `# approach:` names it, which is also how
# the stand-in recognises a parent it wrote itself.
APPROACHES = [
    ("bubble sort", '''def solve(xs):
    # approach: bubble sort
    a = list(xs)
    n = len(a)
    for i in range(n):
        for j in range(n - 1):
            if a[j] > a[j + 1]:
                a[j], a[j + 1] = a[j + 1], a[j]
    return a
'''),
    ("bubble sort with early exit", '''def solve(xs):
    # approach: bubble sort with early exit
    a = list(xs)
    n = len(a)
    while n > 1:
        swapped = False
        for j in range(n - 1):
            if a[j] > a[j + 1]:
                a[j], a[j + 1] = a[j + 1], a[j]
                swapped = True
        if not swapped:
            break
        n -= 1
    return a
'''),
    ("selection sort", '''def solve(xs):
    # approach: selection sort
    a = list(xs)
    for i in range(len(a)):
        m = min(range(i, len(a)), key=a.__getitem__)
        a[i], a[m] = a[m], a[i]
    return a
'''),
    ("insertion sort", '''def solve(xs):
    # approach: insertion sort
    a = list(xs)
    for i in range(1, len(a)):
        v = a[i]
        j = i - 1
        while j >= 0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v
    return a
'''),
    ("merge sort", '''def solve(xs):
    # approach: merge sort
    a = list(xs)
    if len(a) <= 1:
        return a
    mid = len(a) // 2
    left, right = solve(a[:mid]), solve(a[mid:])
    out, i, j = [], 0, 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            out.append(left[i]); i += 1
        else:
            out.append(right[j]); j += 1
    return out + left[i:] + right[j:]
'''),
    ("quicksort", '''def solve(xs):
    # approach: quicksort
    a = list(xs)
    if len(a) <= 1:
        return a
    p = a[len(a) // 2]
    return (solve([x for x in a if x < p]) + [x for x in a if x == p]
            + solve([x for x in a if x > p]))
'''),
    ("insertion sort with binary search", '''import bisect

def solve(xs):
    # approach: insertion sort with binary search
    out = []
    for v in xs:
        bisect.insort(out, v)
    return out
'''),
    ("heap sort (heapq)", '''import heapq

def solve(xs):
    # approach: heap sort (heapq)
    h = list(xs)
    heapq.heapify(h)
    return [heapq.heappop(h) for _ in range(len(h))]
'''),
    ("built-in sorted (Timsort)", '''def solve(xs):
    # approach: built-in sorted (Timsort)
    return sorted(xs)
'''),
]

# Broken children, named by what the "model" claims they are: a wrong result,
# an exception every time, a syntax error.
BROKEN = [
    ("bubble sort with tighter loop bounds", '''def solve(xs):
    # approach: bubble sort with tighter loop bounds
    a = list(xs)
    n = len(a)
    for i in range(n - 2):
        for j in range(n - 2 - i):
            if a[j] > a[j + 1]:
                a[j], a[j + 1] = a[j + 1], a[j]
    return a
'''),
    ("merge sort without the copy", '''def solve(xs):
    # approach: merge sort without the copy
    mid = len(xs) // 2
    left, right = solve(xs[:mid]), solve(xs[mid:])
    out, i, j = [], 0, 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            out.append(left[i]); i += 1
        else:
            out.append(right[j]); j += 1
    return out + left[i:] + right[j:]
'''),
    ("built-in sorted with a faster key", '''def solve(xs):
    # approach: built-in sorted with a faster key
    return sorted(xs, key=lambda x: -x)
'''),
    ("one-line built-in sort", '''def solve(xs)
    # approach: one-line built-in sort
    return sorted(xs)
'''),
]


def approach_rank(text):
    """Rank of the newest `# approach:` in text (the parent), 0 if none."""
    best = None
    for rank, (name, _) in enumerate(APPROACHES):
        pos = text.rfind(f"# approach: {name}\n")
        if pos >= 0 and (best is None or pos > best[0]):
            best = (pos, rank)
    return best[1] if best else 0


def mutate(seed, prompt):
    """A child of the program in prompt: (description, code)."""
    h = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    rng = random.Random(int.from_bytes(h[:8], "big"))
    rank = approach_rank(prompt)
    roll = rng.random()
    if roll < 0.15:
        name, code = rng.choice(BROKEN)
        what = f"a variant using {name}"
    else:
        if roll < 0.60:
            new = min(rank + rng.randint(1, 2), len(APPROACHES) - 1)
        elif roll < 0.85:
            new = max(rank - rng.randint(1, 2), 0)
        else:
            new = rank
        name, code = APPROACHES[new]
        what = f"a variant using {name}"
    # A harmless per-candidate tag, so two children of one parent differ.
    tag = h[8:12].hex()
    code = code.replace("\n", f"  # candidate {tag}\n", 1)
    return what, code


def reply_text(seed, messages):
    prompt = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    if "def solve" in prompt:
        what, code = mutate(seed, prompt)
        return f"Here is {what}; it keeps the signature solve(xs).\n\n```python\n{code}```\n"
    return "This is the local LLM stand-in (scripts/llm-standin.py); it only writes solve(xs) variants.\n"


def tokens(text):
    return max(1, math.ceil(len(text) / 4))


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.second = {}
        self.total = 0

    def count(self, what):
        with self.lock:
            self.second[what] = self.second.get(what, 0) + 1
            self.total += 1

    def take(self):
        with self.lock:
            s, self.second = self.second, {}
            return s, self.total


class Handler(BaseHTTPRequestHandler):
    server_version = "llm-standin/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # per-second summary instead
        pass

    def send_json(self, code, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def error(self, code, kind, msg, headers=()):
        self.server.stats.count(str(code))
        self.send_json(code, {"error": {"message": msg, "type": kind, "code": kind}}, headers)

    def authorised(self):
        key = self.server.key
        if not key:
            return True
        got = self.headers.get("Authorization", "")
        if got == f"Bearer {key}":
            return True
        self.error(401, "invalid_api_key", "missing or wrong bearer key (stand-in)")
        return False

    def do_GET(self):
        if self.path.rstrip("/") != "/v1/models":
            return self.error(404, "not_found", f"no route {self.path}")
        if self.authorised():
            self.server.stats.count("models")
            self.send_json(200, {"object": "list", "data": [
                {"id": self.server.model, "object": "model", "owned_by": "llm-standin"}]})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n > 0 else b""
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self.error(404, "not_found", f"no route {self.path}")
        if not self.authorised():
            return
        try:
            req = json.loads(raw)
            messages = req["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages must be a non-empty list")
            max_tokens = req.get("max_tokens")
            if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
                raise ValueError("max_tokens must be a positive integer")
        except (ValueError, KeyError, TypeError) as e:
            return self.error(400, "invalid_request_error", f"bad request: {e}")
        srv = self.server
        with srv.rng_lock:
            limited = srv.rng.random() < srv.rate_limit_share
        if limited:
            return self.error(429, "rate_limit_exceeded", "rate limit reached (stand-in)",
                              [("Retry-After", str(srv.retry_after))])
        if srv.delay_ms:
            time.sleep(srv.delay_ms / 1000)
        text = reply_text(srv.seed, messages)
        finish = "stop"
        if max_tokens is not None and tokens(text) > max_tokens:
            text, finish = text[: max_tokens * 4], "length"
        pt = tokens("\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict)))
        ct = tokens(text)
        srv.stats.count("ok")
        self.send_json(200, {
            "id": "chatcmpl-standin-" + hashlib.sha256(raw).hexdigest()[:16],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.get("model") or srv.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        })


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = any free port)")
    ap.add_argument("--port-file", help="also write the bound port to this file")
    ap.add_argument("--seed", type=int, default=1, help="seed of the mutations and of the 429 choice")
    ap.add_argument("--rate-limit-share", type=float, default=0.0,
                    help="share of requests answered 429 (0..1)")
    ap.add_argument("--retry-after", type=int, default=2, help="Retry-After seconds of a 429")
    ap.add_argument("--delay-ms", type=int, default=0, help="latency added to each answer")
    ap.add_argument("--model", default="standin-mutator", help="model id reported")
    ap.add_argument("--key-env", default="LLM_STANDIN_KEY",
                    help="environment variable holding the required bearer key (unset = no key)")
    a = ap.parse_args()
    if not 0.0 <= a.rate_limit_share <= 1.0:
        ap.error("--rate-limit-share must be within 0..1")

    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    srv.key = os.environ.get(a.key_env, "")
    srv.seed, srv.model = a.seed, a.model
    srv.rate_limit_share, srv.retry_after, srv.delay_ms = a.rate_limit_share, a.retry_after, a.delay_ms
    srv.rng, srv.rng_lock = random.Random(a.seed), threading.Lock()
    srv.stats = Stats()
    port = srv.server_address[1]
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(f"{port}\n")
        os.replace(a.port_file + ".tmp", a.port_file)
    print(f"llm-standin: listening on 127.0.0.1:{port} (key {'required' if srv.key else 'not required'}, "
          f"429 share {a.rate_limit_share}, seed {a.seed})", flush=True)

    stop = threading.Event()

    def report():
        t0 = time.monotonic()
        while not stop.wait(1.0):
            s, total = srv.stats.take()
            if s:
                parts = " ".join(f"{k}={v}" for k, v in sorted(s.items()))
                print(f"llm-standin: +{time.monotonic() - t0:.0f}s: {sum(s.values())} req/s ({parts}), total {total}",
                      flush=True)

    threading.Thread(target=report, daemon=True).start()

    def on_term(signum, frame):
        # shutdown() blocks until serve_forever returns: call it off this thread.
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    srv.serve_forever()
    stop.set()
    srv.server_close()
    print(f"llm-standin: stopped after {srv.stats.total} requests", flush=True)


if __name__ == "__main__":
    main()
