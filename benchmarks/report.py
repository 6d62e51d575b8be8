"""Print the ratio table from a pytest-benchmark JSON file: each workload's git-slicer case
against each baseline run beside it, with medians, min/max and the target.

    python benchmarks/report.py .benchmarks/latest.json [--markdown]
"""

from __future__ import annotations

import json
import sys

# The targets (#15): (group prefix, our case's name fragment, baseline name fragment)
# -> (max ratio ours/baseline, how the target reads). None: a reference row, no target.
TARGETS = [
    ("W1", "slicer", "clone", 1.0, "<= 1.0x git clone --no-local"),
    ("W2", "slicer", "rsync", 0.5, ">= 2x faster than rsync -a of the whole tree"),
    ("W2", "slicer", "git_status_and_push", 1.5, "<= 1.5x git status + git push to a local bare repo"),
    ("W3", "slicer", "durable", None, "(reference: the tar copy, then syncfs)"),
    ("W3", "slicer", "tar", 2.0, "<= 2x tar c \\| tar x"),
    ("W3", "slicer", "rsync", None, "(reference)"),
    ("W4", "slicer", "fetch", 4.0, "<= 4x git fetch of one commit (file://)"),
    ("W5", "slicer", "status", None, "(reference: scan vs git status)"),
    ("W6", "slicer", "status", 4.0, "<= 4x git status --porcelain"),
    ("status", "slicer", "status", 4.0, "<= 4x git status --porcelain"),
    ("throughput", "slicer", "raw", 1 / 0.85, ">= 85% of a raw pipe copy"),
    ("git commit", "hooks_linked", "empty_hook", 1.05, "<= 1.05x a commit with an empty post-commit hook"),
    ("git commit", "", "", None, "(reference)"),
]


def _target(group: str, ours: str, baseline: str):
    for prefix, mine, fragment, limit, text in TARGETS:
        if group.startswith(prefix) and mine in ours and fragment in baseline:
            return limit, text
    return None, ""


def _is_ours(name: str) -> bool:
    return "slicer" in name or "hooks_linked" in name or "hooks_unlinked" in name or "empty_hook" in name


def _row(group, mine, base_name, base_stats, ours_stats):
    ratio = ours_stats["median"] / base_stats["median"]
    limit, text = _target(group, mine, base_name)
    verdict = "-" if limit is None else ("met" if ratio <= limit else "MISSED")
    return {"workload": group, "ours": mine, "baseline": base_name,
            "ours_median_ms": ours_stats["median"] * 1000, "ours_min_ms": ours_stats["min"] * 1000,
            "ours_max_ms": ours_stats["max"] * 1000, "base_median_ms": base_stats["median"] * 1000,
            "base_min_ms": base_stats["min"] * 1000, "base_max_ms": base_stats["max"] * 1000,
            "ratio": ratio, "target": text, "verdict": verdict}


def rows(data: dict):
    """Each of our cases against each baseline of its group; a case that timed its own baseline
    in the same rounds (paired, extra_info["baseline"]) is compared with that one only."""
    groups = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"] or bench["name"], []).append(bench)
    for group in sorted(groups):
        ours = [b for b in groups[group] if _is_ours(b["name"])]
        bases = [b for b in groups[group] if not _is_ours(b["name"])]
        for mine in ours:
            extra = mine.get("extra_info") or {}
            if extra.get("baseline"):
                paired = {"median": extra["baseline_median_ms"] / 1000,
                          "min": extra.get("baseline_min_ms", extra["baseline_median_ms"]) / 1000,
                          "max": extra.get("baseline_max_ms", extra["baseline_median_ms"]) / 1000}
                yield _row(group, _short(mine["name"]), extra["baseline"] + " (paired)", paired, mine["stats"])
                continue
            for base in bases:
                yield _row(group, _short(mine["name"]), _short(base["name"]), base["stats"], mine["stats"])


def _short(name: str) -> str:
    name = name.split("::")[-1]
    for prefix in ("test_w1_", "test_w2_", "test_w3_", "test_w4_", "test_w5_", "test_w6_", "test_stream_",
                   "test_status_", "test_commit_", "test_"):
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
