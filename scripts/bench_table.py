"""Turn a GPU report's JSON (``bench frame``, ``bench engine``, the GPU tests' junit XML) into one
JSON file and a markdown section, and put that section into docs/benchmarks.md between its markers
(replacing an earlier report, or appended at the end the first time).

    python scripts/bench_table.py --frame frame.json --engine engine.json --tests gpu-tests.xml \\
        --report-json gpu-report.json --markdown gpu-report.md --docs docs/benchmarks.md

Standard library only: it runs where torch does not.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

BEGIN = "<!-- gpu-report:begin (written by scripts/bench_table.py; edit outside these markers) -->"
END = "<!-- gpu-report:end -->"


def read_json(path: Path | None) -> dict | None:
    if path is None or not path.exists():
        return None
    return json.loads(path.read_text())


def read_junit(path: Path | None) -> dict | None:
    """pytest's junit XML -> {tests, passed, failed, errors, skipped}, or None when there is none."""
    if path is None or not path.exists():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase") if c.find("failure") is not None]
    return {
        "tests": counts["tests"],
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "failed": counts["failures"],
        "errors": counts["errors"],
        "skipped": counts["skipped"],
        "failed_names": failed,
    }


def frame_table(frame: dict) -> list[str]:
    lines = [
        f"`{frame['command']}`: {frame['config']}, {frame['frames']} frames after a {frame['prompt_tokens']}-token prompt",
        "",
        "| dtype | ours ms/frame | ours ms/step (no prefill) | real-time factor | CUDA graphs | transformers ms/frame | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in frame["results"]:
        ours, peer = row["ours"], row.get("transformers")
        lines.append(
            f"| {row['dtype']} | {ours['ms_per_frame']:.2f} | {ours['ms_per_step']:.2f} | "
            f"{row['real_time_factor']:.4f} | {'on' if ours.get('cuda_graphs') else 'off'} | "
            + (f"{peer['ms_per_frame']:.1f} | {row['speedup_vs_transformers']:.1f}x |" if peer else "- | - |")
        )
    return lines


def engine_table(engine: dict) -> list[str]:
    lines = [
        f"`{engine['command']}`: {engine['model']}, {engine['dtype']}, CUDA graphs "
        f"{'on' if engine['cuda_graphs'] else 'off'}, {engine['audio_ms_per_request']} ms of audio per request",
        "",
        f"- time to first audio (median, short sentence): {engine['ttfa_ms_median']:.1f} ms",
        f"- one stream: {engine['single_stream_ms_per_frame']:.2f} ms per 80 ms frame "
        f"(real-time factor {engine['single_stream_real_time_factor']:.4f}); start-up {engine['startup_s']:.1f} s",
        "",
        "| streams | ms/frame per stream (mean) | p99 | streams faster than real time | TTFA p50 ms | TTFA p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for row in engine["concurrency"]:
        lines.append(
            f"| {row['streams']} | {row['frame_interval_ms_mean']:.2f} | {row['frame_interval_ms_p99']:.2f} | "
            f"{row['real_time_streams']}/{row['streams']} | {row['ttfa_ms_p50']:.0f} | {row['ttfa_ms_p99']:.0f} |"
        )
    return lines


def tests_line(tests: dict | None) -> str:
    if tests is None:
        return "- GPU tests: not run"
    line = (
        f"- GPU tests (`pytest -m gpu tests/gpu`): {tests['passed']} passed, {tests['failed']} failed, "
        f"{tests['errors']} errors, {tests['skipped']} skipped"
    )
    return line + (f"; failed: {', '.join(tests['failed_names'])}" if tests["failed_names"] else "")


def render(report: dict) -> str:
    """The docs section (without markers) for a report {command, frame, engine, tests}."""
    first = report.get("frame") or report.get("engine") or {}
    lines = [
        f"### {first.get('device', 'unknown device')}, {first.get('date', 'undated')}",
        "",
        f"- Command: `{report['command']}`; torch {first.get('torch', '?')}",
        tests_line(report.get("tests")),
        "",
    ]
    for name, table in (("frame", frame_table), ("engine", engine_table)):
        lines += [f"#### bench {name}", ""]
        lines += table(report[name]) if report.get(name) else [f"not run (no {name} JSON)"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def update_docs(docs: str, section: str, heading: str = "## First GPU run: results") -> str:
    """Replace what lies between the markers, or append heading + markers at the end."""
    block = f"{BEGIN}\n{section}{END}\n"
    if BEGIN in docs and END in docs:
        before, rest = docs.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        return before + block + (after[1:] if after.startswith("\n") else after)
    return docs.rstrip("\n") + f"\n\n{heading}\n\n{block}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame", type=Path, help="bench frame JSON")
    parser.add_argument("--engine", type=Path, help="bench engine JSON")
    parser.add_argument("--tests", type=Path, help="pytest junit XML of the GPU tests")
    parser.add_argument("--command", default="scripts/gpu_report.sh", help="the command that made the report")
    parser.add_argument("--report-json", type=Path, help="write the combined JSON here")
    parser.add_argument("--markdown", type=Path, help="write the section here")
    parser.add_argument("--docs", type=Path, help="update this markdown file between the markers")
    args = parser.parse_args(argv)
    report = {
        "command": args.command,
        "frame": read_json(args.frame),
        "engine": read_json(args.engine),
        "tests": read_junit(args.tests),
    }
    if report["frame"] is None and report["engine"] is None:
        print("no benchmark JSON found: nothing to report", file=sys.stderr)
        return 1
    section = render(report)
    print(section)
    if args.report_json:
        args.report_json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(section)
    if args.docs:
        args.docs.write_text(update_docs(args.docs.read_text(), section))
        print(f"updated {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
