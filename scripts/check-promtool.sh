#!/bin/sh
# CI gate for the monitoring kit (needs promtool and python3):
#  - promtool check rules + promtool test rules (each alert firing and not firing),
#  - every test file names each alert of the rule file in a firing and a
#    not-firing case,
#  - Grafana dashboards: valid JSON, up to date with generate.py, every query
#    parses as PromQL (promtool check rules on a generated rule file),
#  - docs/operations.md's metric and alert tables list exactly the contract
#    and the rule file's alerts,
#  - alerts and dashboards use only the metric names of the contract
#    (packaging/prometheus/metric-names.txt), and dashboards only recorded
#    series (peagen:...) that the rule file records.
set -eu
cd "$(dirname "$0")/.."
P=packaging/prometheus
G=packaging/grafana
tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/peagen-promtool.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
command -v promtool >/dev/null || {
    echo "check-promtool: promtool not found: install Debian's prometheus package (scripts/install-deps.sh)" >&2
    exit 1
}

promtool check rules "$P/peagen-alerts.yml"
promtool test rules "$P"/tests/*.test.yml

python3 - "$P" "$G" "$tmp" <<'PY'
import json, re, sys, os
P, G, tmp = sys.argv[1:4]
fail = []
# Each alert: at least one test case expecting it firing and one expecting none.
alerts = re.findall(r"^\s*- alert:\s*(\S+)", open(f"{P}/peagen-alerts.yml").read(), re.M)
tests = ""
for f in sorted(os.listdir(f"{P}/tests")):
    tests += open(f"{P}/tests/{f}").read()
cases = re.findall(r"alertname:\s*(\S+)\n\s*exp_alerts:\s*(\[\])?", tests)
for a in alerts:
    fires = any(n == a and not empty for n, empty in cases)
    quiet = any(n == a and empty for n, empty in cases)
    if not (fires and quiet):
        fail.append(f"alert {a}: tests need a firing case ({fires}) and a not-firing case ({quiet})")
# Metric contract.
contract = {}
for line in open(f"{P}/metric-names.txt"):
    line = line.strip()
    if line and not line.startswith("#"):
        kind, name = line.split()
        contract[name] = kind
def check_names(text, where):
    for m in sorted(set(re.findall(r"\bpeagen_[a-z0-9_]+", text))):
        base = m
        for suf in ("_bucket", "_sum", "_count"):
            if m.endswith(suf) and contract.get(m[: -len(suf)]) == "histogram":
                base = m[: -len(suf)]
        if base not in contract:
            fail.append(f"{where}: metric {m} is not in metric-names.txt")
rules_text = open(f"{P}/peagen-alerts.yml").read()
check_names("\n".join(re.findall(r"expr:.*(?:\n\s{10,}.*)*", rules_text)), "alerts")
recorded = set(re.findall(r"^\s*- record:\s*(\S+)", rules_text, re.M))
# Dashboards: collect queries into a rule file for promtool.
rules = []
for name in ("peagen-main.json", "peagen-cost.json"):
    d = json.load(open(f"{G}/{name}"))
    assert d["uid"] and d["panels"], name
    for p in d["panels"]:
        for t in p.get("targets", []):
            e = t["expr"]
            check_names(e, f"{name} panel {p['title']!r}")
            for r in sorted(set(re.findall(r"\bpeagen:[a-z0-9_:]+", e))):
                if r not in recorded:
                    fail.append(f"{name} panel {p['title']!r}: {r} is not recorded by peagen-alerts.yml")
            e = e.replace("$instance", ".*").replace("$__range", "1h")
            rules.append({"record": f"peagen:dashboard:{len(rules)}", "expr": e})
# docs/operations.md: its metric tables name exactly the contract (with its
# types), its alert tables exactly the rule file's alerts.
documented, doc_alerts = set(), set()
for line in open("docs/operations.md"):
    cells = [c.strip() for c in line.split("|")]
    if len(cells) < 4:
        continue
    first = cells[1].strip("`")
    if first.startswith("peagen_"):
        documented.add((first.split("{")[0], cells[2]))
    elif re.fullmatch(r"Peagen[A-Za-z0-9]+", first):
        doc_alerts.add(first)
want = {(n, k) for n, k in contract.items()}
for n, k in sorted(documented - want):
    fail.append(f"docs/operations.md: metric row {n} ({k}) is not in metric-names.txt")
for n, k in sorted(want - documented):
    fail.append(f"docs/operations.md: no metric row for {n} ({k})")
for a in sorted(doc_alerts ^ set(alerts)):
    fail.append(f"docs/operations.md: alert {a} is in only one of the docs' alert tables and peagen-alerts.yml")
with open(f"{tmp}/dash.rules.yml", "w") as f:
    json.dump({"groups": [{"name": "dashboards", "rules": rules}]}, f)
print(f"check-promtool: {len(alerts)} alerts with firing+quiet tests, {len(rules)} dashboard queries")
if fail:
    print("\n".join("check-promtool: FAIL: " + x for x in fail), file=sys.stderr)
    sys.exit(1)
PY
promtool check rules "$tmp/dash.rules.yml"
python3 "$G/generate.py" --check
echo "check-promtool: OK"
