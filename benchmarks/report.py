"""Print the ratio table from a pytest-benchmark JSON file: each workload's git-slicer case
against each baseline run beside it, with medians, min/max and the target.

    python benchmarks/report.py .benchmarks/latest.json [--markdown]
"""

from __future__ import annotations

import json
import sys

# (group prefix, baseline name fragment) -> (max ratio slicer/baseline, how the target reads)
TARGETS = {
    ("W1", "clone"): (1.2, "<= 1.2x git clone --no-local"),
    ("W2", "rsync"): (1 / 3, ">= 3x faster than rsync -a"),
    ("W2", "git_push"): (2.0, "<= 2x git push to a local bare repo"),
    ("W3", "tar"): (1.3, "<= 1.3x tar-to-tar"),
    ("W3", "rsync"): (None, "(reference)"),
    ("W4", "fetch"): (1.3, "<= 1.3x git fetch file://"),
    ("W5", "status"): (None, "(reference: scan vs git status)"),
    ("W6", "status"): (2.0, "<= 2x git status"),
    ("throughput", "raw"): (1 / 0.7, ">= 70% of a raw pipe copy"),
    ("git commit", "no_hooks"): (1.05, "<= 1.05x git commit without hooks"),
}


def _target(group: str, baseline: str):
    for (prefix, fragment), target in TARGETS.items():
        if group.startswith(prefix) and fragment in baseline:
            return target
    return None, ""


def _is_ours(name: str) -> bool:
    return "slicer" in name or "hooks_linked" in name or "hooks_unlinked" in name


def rows(data: dict):
    groups = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"] or bench["name"], []).append(bench)
    for group in sorted(groups):
        ours = [b for b in groups[group] if _is_ours(b["name"])]
        bases = [b for b in groups[group] if not _is_ours(b["name"]) and "empty_hook" not in b["name"]]
        for mine in ours:
            for base in bases:
                ratio = mine["stats"]["median"] / base["stats"]["median"]
                limit, text = _target(group, base["name"])
                verdict = "-" if limit is None else ("met" if ratio <= limit else "MISSED")
                yield {"workload": group, "ours": _short(mine["name"]), "baseline": _short(base["name"]),
                       "ours_median_ms": mine["stats"]["median"] * 1000, "ours_min_ms": mine["stats"]["min"] * 1000,
                       "ours_max_ms": mine["stats"]["max"] * 1000, "base_median_ms": base["stats"]["median"] * 1000,
                       "base_min_ms": base["stats"]["min"] * 1000, "base_max_ms": base["stats"]["max"] * 1000,
                       "ratio": ratio, "target": text, "verdict": verdict}


def _short(name: str) -> str:
    name = name.split("::")[-1]
    for prefix in ("test_w1_", "test_w2_", "test_w3_", "test_w4_", "test_w5_", "test_w6_", "test_stream_",
                   "test_commit_", "test_"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def main(argv) -> int:
    path = argv[0] if argv else ".benchmarks/latest.json"
    with open(path) as fh:
        data = json.load(fh)
    table = list(rows(data))
    header = ("| workload | git-slicer | baseline | ours median (min-max) ms | baseline median (min-max) ms "
              "| ratio | target | |")
    print(header)
    print("|" + " --- |" * 8)
    for r in table:
        print("| %s | %s | %s | %.0f (%.0f-%.0f) | %.0f (%.0f-%.0f) | %.2fx | %s | %s |" % (
            r["workload"], r["ours"], r["baseline"], r["ours_median_ms"], r["ours_min_ms"], r["ours_max_ms"],
            r["base_median_ms"], r["base_min_ms"], r["base_max_ms"], r["ratio"], r["target"], r["verdict"]))
    machine = data.get("machine_info", {})
    print("\nmachine: %s, %s cores, Python %s" % (machine.get("cpu", {}).get("brand_raw", machine.get("processor", "?")),
                                                 machine.get("cpu", {}).get("count", "?"),
                                                 machine.get("python_version", "?")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
