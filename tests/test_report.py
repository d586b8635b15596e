"""The replay's time series and its report (``stream-learner replay --report DIR``). Pure."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import orjson
import pytest

from stream_learner.cli import main
from stream_learner.config import parse_config
from stream_learner.errors import ConfigError
from stream_learner.replay import MAX_POINTS, PolicyReport, read_history, replay, resolve_policy
from stream_learner.report import (
    chart_names,
    comparison_figure,
    policy_figure,
    prepare_dir,
    write_report,
)
from stream_learner.synth import demo_messages
from tests.test_replay import CONFIG

N, CHANGE_AT = 8000, 4000  # SEA, abrupt drift half-way: the performance policy retrains once
POLICIES = ("never", "interval:1000", "performance")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(path: Path, n: int, **kwargs) -> Path:
    messages = demo_messages(n, change_at=n // 2, t0=1_700_000_000.0, **kwargs)
    path.write_bytes(b"".join(orjson.dumps(m.value) + b"\n" for m in messages))
    return path


@pytest.fixture(scope="module")
def config():
    return parse_config(tomllib.loads(CONFIG), env={})  # the replay tests' model and settings


@pytest.fixture(scope="module")
def drifting(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("report") / "history.jsonl", N)


@pytest.fixture(scope="module")
def history(drifting):
    return read_history(drifting)


@pytest.fixture(scope="module")
def reports(history, config) -> list[PolicyReport]:
    return replay(history, config, [resolve_policy(p) for p in POLICIES])


# -- the series ----------------------------------------------------------------------------


def test_series_is_bounded_monotone_and_ends_at_the_reported_value(history, reports):
    for report in reports:
        s = report.series
        assert 0 < len(s["input"]) <= MAX_POINTS
        assert len(s["input"]) == len(s["ts"]) == len(s["rolling"])
        assert all(a < b for a, b in zip(s["input"], s["input"][1:], strict=False))
        assert s["input"][-1] == len(history) == report.inputs
        # Each point carries the event time of the input it was taken after.
        assert s["ts"] == [history[i - 1].ts for i in s["input"]]
        assert s["rolling"][-1] == pytest.approx(report.rolling)
        assert all(0.0 <= v <= 1.0 for v in s["rolling"])


def test_a_short_history_is_sampled_at_every_input(history, config):
    short = history[:300]
    [report] = replay(short, config, [resolve_policy("never")])
    assert report.series["input"] == list(range(1, 301))


def test_each_point_is_what_a_replay_of_the_prefix_reports(tmp_path, config):
    """Several keys and delayed labels: the running weighted sum must match, point for point,
    the weighted rolling metric of a replay that stops there (a replay is causal)."""
    path = _write(tmp_path / "keys.jsonl", 1500, keys=("a", "b", "c"), unlabelled_share=0.3)
    history = read_history(path)
    assert len(history) > MAX_POINTS  # sampled, not every input
    policy = resolve_policy("performance")
    [full] = replay(history, config, [policy])
    s = full.series
    assert len(s["input"]) <= MAX_POINTS
    for at in (s["input"][10], s["input"][len(s["input"]) // 2], s["input"][-7]):
        [prefix] = replay(history[:at], config, [policy])
        assert s["rolling"][s["input"].index(at)] == pytest.approx(prefix.rolling, rel=1e-12)


def test_the_known_drift_is_recorded_with_its_input_and_key(reports):
    performance = reports[2]
    drifts = [s for s in performance.signals if s["kind"] == "performance"]
    drifts = [s for s in drifts if s["level"] == "drift"]
    assert drifts and CHANGE_AT < drifts[0]["input"] < CHANGE_AT + 1500
    assert drifts[0]["key"] == "default" and drifts[0]["detector"] == "adwin"
    assert performance.signals_total == len(performance.signals)
    # One key: the key's own index is the position in the history.
    assert all(d["input"] == d["index"] for d in performance.decisions)
    assert all(s["input"] == s["index"] for s in performance.signals)
    retrain = next(d for d in performance.decisions if d["action"] == "retrain")
    assert retrain["input"] >= drifts[0]["input"]


def test_to_dict_adds_the_series_and_keeps_the_old_keys(reports):
    body = reports[0].to_dict(decisions=False)
    old = {"policy", "metric_name", "metric", "rolling", "retrains", "promoted"}
    assert old | {"retrain_s", "inputs", "events_per_s"} <= set(body)
    assert "decisions" not in body
    assert set(body["series"]) == {"input", "ts", "rolling"}
    assert body["signals"] == reports[0].signals
    assert "decisions" in reports[0].to_dict()


# -- the charts and the page -----------------------------------------------------------------


def _vlines(ax) -> dict[str, list[float]]:
    """Full-height markers by legend label: their x positions."""
    out = {}
    for c in ax.collections:
        if not c.get_label().startswith("_"):
            out[c.get_label()] = sorted(float(seg[0][0]) for seg in c.get_segments())
    return out


def test_policy_chart_marks_the_drift_and_the_retrains(reports):
    never, interval, performance = reports
    ax = policy_figure(performance).axes[0]
    marks = _vlines(ax)
    drift_at = [s["input"] for s in performance.signals if s["level"] == "drift"]
    promoted = [d["input"] for d in performance.decisions if d["action"] == "promote"]
    assert marks["performance drift"] == drift_at
    assert marks["retrain promoted"] == promoted and promoted
    assert "retrain kept" not in marks
    # The interval policy keeps some results: both kinds of outcome, told apart.
    marks = _vlines(policy_figure(interval).axes[0])
    kept = [d["input"] for d in interval.decisions if d["action"] == "keep"]
    assert kept and marks["retrain kept"] == kept
    promoted = [d["input"] for d in interval.decisions if d["action"] == "promote"]
    assert marks.get("retrain promoted", []) == promoted
    started = [
        line
        for line in policy_figure(interval).axes[0].lines
        if line.get_label() == "retrain started"
    ]
    assert list(started[0].get_xdata()) == [
        d["input"] for d in interval.decisions if d["action"] == "retrain"
    ]
    # Never retrains: its chart has the drift, no retrain marker.
    assert set(_vlines(policy_figure(never).axes[0])) <= {
        "performance drift",
        "performance warning",
    }


def test_comparison_chart_has_every_policy_and_the_known_change(reports):
    ax = comparison_figure(reports, changes=[CHANGE_AT]).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[: len(POLICIES)] == list(POLICIES)
    assert {"drift detected", "retrain promoted", "retrain kept", "known change"} <= set(labels)
    assert any(list(line.get_xdata()) == [CHANGE_AT, CHANGE_AT] for line in ax.lines)


def _srcs(page: str) -> list[str]:
    return re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)


def test_report_is_a_self_contained_page_and_pngs(tmp_path, reports):
    out = tmp_path / "nested" / "report"
    page_path = write_report(reports, out, context="SEA, drift at 4,000")
    assert page_path == out / "index.html"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["index.html", "comparison.png", "never.png", "interval-1000.png", "performance.png"]
    )
    for png in out.glob("*.png"):
        assert png.read_bytes().startswith(PNG_MAGIC)
    page = page_path.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "<script" not in page
    srcs = _srcs(page)
    assert len(srcs) == 1 + len(POLICIES)
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "SEA, drift at 4,000" in page
    # The table: one row per policy, with the report's figures.
    table = re.search(r"<table>.*</table>", page, re.S).group(0)
    rows = re.findall(r"<tr><td>.*?</tr>", table)
    assert len(rows) == len(POLICIES)
    for row, report in zip(rows, reports, strict=True):
        assert report.policy in row
        assert f"<td>{report.metric:.4f}</td>" in row and f"<td>{report.retrains}</td>" in row
    # Every policy has its section, its drift listed.
    for report in reports:
        assert f"<h2>{report.policy}</h2>" in page
    first = next(s["input"] for s in reports[2].signals if s["level"] == "drift")
    assert f"drift detected (1) at input {first:,}" in page


def test_chart_names_are_file_safe_and_unique():
    assert chart_names(["interval:1000", "never", "never", "comparison", "a/b c"]) == [
        "interval-1000.png",
        "never.png",
        "never-2.png",
        "comparison-2.png",
        "a-b-c.png",
    ]


def test_a_report_path_that_is_a_file_is_one_config_error(tmp_path):
    path = tmp_path / "taken"
    path.write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        prepare_dir(path)


# -- the command line ---------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return path


def test_cli_writes_the_report_next_to_the_table(tmp_path, drifting, config_file, capsys):
    out = tmp_path / "out"
    args = ["replay", "--config", str(config_file), "--input", str(drifting)]
    code = main([*args, "--policy", "never", "--policy", "performance", "--report", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("| policy | accuracy")
    assert captured.err == f"replay: report written to {out / 'index.html'}\n"
    assert sorted(p.name for p in out.iterdir()) == [
        "comparison.png",
        "index.html",
        "never.png",
        "performance.png",
    ]
    page = (out / "index.html").read_text(encoding="utf-8")
    assert str(drifting) in page and "<h2>performance</h2>" in page

    # --json carries the series too.
    assert main([*args, "--policy", "performance", "--json"]) == 0
    [body] = orjson.loads(capsys.readouterr().out)
    assert body["series"]["input"][-1] == N and len(body["series"]["input"]) <= MAX_POINTS


def test_cli_report_onto_a_file_is_one_line_before_any_work(tmp_path, config_file, capsys):
    taken = tmp_path / "taken.html"
    taken.write_text("not a directory")
    missing = tmp_path / "nope.jsonl"  # never read: the report path is checked first
    argv = ["replay", "--config", str(config_file), "--input", str(missing)]
    assert main([*argv, "--policy", "never", "--report", str(taken)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "taken.html: exists and is not a directory" in err
    assert taken.read_text() == "not a directory"


def test_cli_report_without_matplotlib_says_what_to_install(
    tmp_path, drifting, config_file, capsys, monkeypatch
):
    # None in sys.modules makes `import matplotlib` fail, as on a machine without it.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "out"
    argv = ["replay", "--config", str(config_file), "--input", str(drifting)]
    assert main([*argv, "--policy", "never", "--report", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "pip install 'stream-learner[report]'" in captured.err
    assert captured.out == "" and not out.exists()
