"""Render docs/grafana-dashboard.json from a real local run, without Grafana.

    .venv/bin/python docs/render_dashboard.py [--output docs/dashboard.png]

It starts `launcher local --ranks 2` (the toy model), sends requests with
tritonclient in phases (idle, load, heavier load, idle), scrapes rank 0's
Triton metrics and the launcher's /metrics once a second, evaluates each
panel's PromQL over the scraped series with a small evaluator (the subset
the dashboard uses: plain selectors, rate/increase over a range,
sum/avg/max/min by, clamp_min, division, comparison filters, and the chart's
recording rules), and draws the panels in the dashboard's grid with
matplotlib. Panels it cannot evaluate are drawn as boxes that say so.

What stands in for Prometheus and Grafana:
- every scraped series gets the target labels the chart's PodMonitor adds
  (namespace, pod, app_kubernetes_io_instance, app_kubernetes_io_component),
  and the dashboard's $namespace/$release are set to match them;
- $__rate_interval is 5s (Grafana's floor of four scrape intervals, here 1 s);
- rate() is the increase between the first and last sample in the window
  (counter resets handled) over their time span, without Prometheus's
  extrapolation to the window's edges; increase() is rate() times the window;
- an instant selector takes a series' latest sample at most 2 s old.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "docs" / "grafana-dashboard.json"
RULES_TEMPLATE = REPO / "chart" / "templates" / "prometheusrule.yaml"
CAPTION = "rendered by docs/render_dashboard.py from a local run, not by Grafana"

# The labels the chart's PodMonitor puts on every series of a leader pod, for this local run.
TARGET = {"namespace": "local", "pod": "local-lws-triton-0", "app_kubernetes_io_instance": "local",
          "app_kubernetes_io_component": "leader"}
VARIABLES = {"namespace": TARGET["namespace"], "release": TARGET["app_kubernetes_io_instance"],
             "__rate_interval": "5s"}
LOOKBACK_S = 2.0

Labels = frozenset[tuple[str, str]]
Points = list[tuple[float, float]]
Vector = dict[Labels, float]


# ---------------------------------------------------------------------------
# Series storage


@dataclass
class SeriesStore:
    """Scraped samples: series (labels with __name__) -> [(t, value)] in time order."""

    series: dict[Labels, Points] = field(default_factory=dict)

    def add(self, t: float, name: str, labels: dict[str, str], value: float) -> None:
        key = frozenset({**labels, "__name__": name}.items())
        self.series.setdefault(key, []).append((t, value))

    def add_exposition(self, t: float, text: str, target: dict[str, str]) -> None:
        """Samples of one Prometheus text-format scrape, named as exposed, with the target's labels."""
        for line in text.splitlines():
            sample = parse_sample_line(line)
            if sample is not None:
                name, labels, value = sample
                self.add(t, name, {**labels, **target}, value)

    def matching(self, name: str, matchers: tuple[Matcher, ...]) -> dict[Labels, Points]:
        return {labels: points for labels, points in self.series.items()
                if dict(labels).get("__name__") == name and all(m.matches(dict(labels)) for m in matchers)}


SAMPLE_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\d+)?$")
LABEL_PAIR = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def parse_sample_line(line: str) -> tuple[str, dict[str, str], float] | None:
    """(name, labels, value) of one exposition line; None for comments, blanks and what it cannot read.
    (prometheus_client's parser renames counters to *_total; Prometheus keeps the exposed name.)"""
    match = SAMPLE_LINE.match(line.strip())
    if line.startswith("#") or not match:
        return None
    labels = {key: json.loads(f'"{value}"') for key, value in LABEL_PAIR.findall(match.group("labels") or "")}
    try:
        return match.group("name"), labels, float(match.group("value"))
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# The PromQL subset: syntax tree


class Unsupported(Exception):
    """The expression uses PromQL this evaluator does not implement."""


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[Matcher, ...]
    range_s: float | None = None


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Call:
    function: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Aggregate:
    op: str
    by: tuple[str, ...]
    expr: Node


@dataclass(frozen=True)
class Binary:
    op: str
    lhs: Node
    rhs: Node


Node = Selector | Number | Call | Aggregate | Binary
AGGREGATIONS = {"sum", "avg", "max", "min", "count"}
FUNCTIONS = {"rate", "increase", "clamp_min"}
COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
TOKEN = re.compile(r"\s*(?:(?P<duration>\d+[smhd](?![a-zA-Z_]))|(?P<number>\d+(?:\.\d+)?(?![\w.]))|"
                   r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)|(?P<string>\"(?:[^\"\\]|\\.)*\")|"
                   r"(?P<op>==|!=|>=|<=|=~|!~|[-+*/(){}\[\],=<>]))")
DURATION_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(expr.rstrip()):
        match = TOKEN.match(expr, pos)
        if not match or match.lastgroup is None:
            raise Unsupported(f"cannot read {expr[pos:pos + 20]!r}")
        tokens.append((match.lastgroup, match.group(match.lastgroup)))
        pos = match.end()
    return tokens


class Parser:
    """Recursive descent: comparison < additive < multiplicative < primary, as PromQL binds them."""

    def __init__(self, expr: str) -> None:
        self.tokens = tokenize(expr)
        self.pos = 0

    def parse(self) -> Node:
        node = self.comparison()
        if self.pos != len(self.tokens):
            raise Unsupported(f"unexpected {self.tokens[self.pos][1]!r}")
        return node

    def peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise Unsupported("expression ends early")
        token = self.tokens[self.pos]
        if expected is not None and token[1] != expected:
            raise Unsupported(f"expected {expected!r}, got {token[1]!r}")
        self.pos += 1
        return token

    def binary(self, ops: Iterable[str], operand: Callable[[], Node]) -> Node:
        node = operand()
        while self.peek() in set(ops):
            op = self.take()[1]
            if self.peek() == "bool":
                raise Unsupported("comparison with bool")
            node = Binary(op, node, operand())
        return node

    def comparison(self) -> Node:
        return self.binary(COMPARISONS, self.additive)

    def additive(self) -> Node:
        return self.binary(("+", "-"), self.multiplicative)

    def multiplicative(self) -> Node:
        return self.binary(("*", "/"), self.primary)

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "number":
            return Number(float(text))
        if text == "(":
            node = self.comparison()
            self.take(")")
            return node
        if kind != "name":
            raise Unsupported(f"unexpected {text!r}")
        if text in AGGREGATIONS and self.peek() in ("by", "("):
            return self.aggregate(text)
        if text in FUNCTIONS and self.peek() == "(":
            return self.call(text)
        if self.peek() == "(" or self.peek() in ("by", "without", "offset"):
            raise Unsupported(f"{text}(...) is not implemented")
        return self.selector(text)

    def aggregate(self, op: str) -> Node:
        by: tuple[str, ...] = ()
        if self.peek() == "by":
            self.take()
            by = self.labels()
        self.take("(")
        expr = self.comparison()
        self.take(")")
        if self.peek() in ("by", "without"):
            raise Unsupported("a grouping clause after the aggregation")
        return Aggregate(op, by, expr)

    def labels(self) -> tuple[str, ...]:
        self.take("(")
        names = []
        while self.peek() != ")":
            names.append(self.take()[1])
            if self.peek() == ",":
                self.take()
        self.take(")")
        return tuple(names)

    def call(self, function: str) -> Node:
        self.take("(")
        args = [self.comparison()]
        while self.peek() == ",":
            self.take()
            args.append(self.comparison())
        self.take(")")
        return Call(function, tuple(args))

    def selector(self, name: str) -> Node:
        matchers: list[Matcher] = []
        if self.peek() == "{":
            self.take()
            while self.peek() != "}":
                label = self.take()[1]
                op = self.take()[1]
                kind, value = self.take()
                if kind != "string" or op not in ("=", "!=", "=~", "!~"):
                    raise Unsupported(f"matcher {label}{op}{value}")
                matchers.append(Matcher(label, op, json.loads(value)))
                if self.peek() == ",":
                    self.take()
            self.take("}")
        range_s = None
        if self.peek() == "[":
            self.take()
            kind, text = self.take()
            if kind != "duration":
                raise Unsupported(f"range {text!r}")
            range_s = float(text[:-1]) * DURATION_S[text[-1]]
            self.take("]")
        return Selector(name, tuple(matchers), range_s)


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's template variables ($name and ${name})."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    if "$" in expr:
        raise Unsupported(f"unknown variable in {expr}")
    return expr


# ---------------------------------------------------------------------------
# Evaluation at one instant


def without_name(labels: Labels) -> Labels:
    return frozenset(item for item in labels if item[0] != "__name__")


def counter_increase(points: Points) -> float:
    """Increase across ``points``; a drop is a counter reset (counting restarts from zero)."""
    total = 0.0
    for (_, before), (_, after) in zip(points, points[1:], strict=False):
        total += after - before if after >= before else after
    return total


@dataclass
class Evaluator:
    store: SeriesStore
    rules: dict[str, Node] = field(default_factory=dict)  # recorded series name -> expression

    def instant(self, node: Node, t: float) -> Vector | float:
        if isinstance(node, Number):
            return node.value
        if isinstance(node, Selector):
            return self.select(node, t)
        if isinstance(node, Call):
            return self.call(node, t)
        if isinstance(node, Aggregate):
            return self.aggregate(node, t)
        return self.binary(node, t)

    def vector(self, node: Node, t: float) -> Vector:
        result = self.instant(node, t)
        if not isinstance(result, dict):
            raise Unsupported("a scalar where a vector is needed")
        return result

    def select(self, node: Selector, t: float) -> Vector:
        if node.range_s is not None:
            raise Unsupported("a range selector outside rate() or increase()")
        if node.name in self.rules:  # a recording rule, evaluated on the fly
            recorded = self.vector(self.rules[node.name], t)
            return {labels: value for labels, value in recorded.items()
                    if all(m.matches(dict(labels)) for m in node.matchers)}
        vector: Vector = {}
        for labels, points in self.store.matching(node.name, node.matchers).items():
            recent = [(ts, v) for ts, v in points if t - LOOKBACK_S < ts <= t]
            if recent:
                vector[labels] = recent[-1][1]
        return vector

    def call(self, node: Call, t: float) -> Vector:
        if node.function == "clamp_min":
            low = self.instant(node.args[1], t)
            if len(node.args) != 2 or not isinstance(low, float):
                raise Unsupported("clamp_min(vector, number)")
            return {without_name(k): max(v, low) for k, v in self.vector(node.args[0], t).items()}
        selector = node.args[0]
        if len(node.args) != 1 or not isinstance(selector, Selector) or selector.range_s is None:
            raise Unsupported(f"{node.function}() of anything but a range selector")
        if selector.name in self.rules:
            raise Unsupported(f"{node.function}() of a recorded series")
        window = selector.range_s
        result: Vector = {}
        for labels, points in self.store.matching(selector.name, selector.matchers).items():
            inside = [(ts, v) for ts, v in points if t - window < ts <= t]
            if len(inside) < 2 or inside[-1][0] == inside[0][0]:
                continue
            rate = counter_increase(inside) / (inside[-1][0] - inside[0][0])
            result[without_name(labels)] = rate * window if node.function == "increase" else rate
        return result

    def aggregate(self, node: Aggregate, t: float) -> Vector:
        groups: dict[Labels, list[float]] = {}
        for labels, value in self.vector(node.expr, t).items():
            key = frozenset((k, v) for k, v in labels if k in node.by)
            groups.setdefault(key, []).append(value)
        combine: dict[str, Callable[[list[float]], float]] = {
            "sum": sum, "max": max, "min": min, "count": lambda v: float(len(v)),
            "avg": lambda v: sum(v) / len(v)}
        return {key: combine[node.op](values) for key, values in groups.items()}

    def binary(self, node: Binary, t: float) -> Vector | float:
        lhs, rhs = self.instant(node.lhs, t), self.instant(node.rhs, t)
        if isinstance(lhs, float) and isinstance(rhs, float):
            return apply(node.op, lhs, rhs) if node.op not in COMPARISONS else lhs
        if node.op in COMPARISONS:
            if not isinstance(rhs, float) or not isinstance(lhs, dict):
                raise Unsupported("comparison other than vector against a number")
            return {k: v for k, v in lhs.items() if compare(node.op, v, rhs)}
        if isinstance(rhs, float):
            assert isinstance(lhs, dict)
            return {without_name(k): apply(node.op, v, rhs) for k, v in lhs.items()}
        if isinstance(lhs, float):
            return {without_name(k): apply(node.op, lhs, v) for k, v in rhs.items()}
        right = {without_name(k): v for k, v in rhs.items()}  # one-to-one on identical label sets
        return {without_name(k): apply(node.op, v, right[without_name(k)])
                for k, v in lhs.items() if without_name(k) in right}


def apply(op: str, a: float, b: float) -> float:
    if op == "/":
        return a / b if b else (float("nan") if a == 0 else float("inf") * (1 if a > 0 else -1))
    return {"*": a * b, "+": a + b, "-": a - b}[op]


def compare(op: str, a: float, b: float) -> bool:
    return {"==": a == b, "!=": a != b, ">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]


def evaluate_range(evaluator: Evaluator, expr: str, times: Iterable[float]) -> dict[Labels, Points]:
    """``expr`` (template variables already substituted) at each of ``times``: series -> points."""
    node = Parser(expr).parse()
    out: dict[Labels, Points] = {}
    for t in times:
        result = evaluator.instant(node, t)
        if not isinstance(result, dict):
            raise Unsupported("a scalar query")
        for labels, value in result.items():
            out.setdefault(labels, []).append((t, value))
    return out


def chart_recording_rules(variables: dict[str, str]) -> dict[str, Node]:
    """The chart's PrometheusRule records, read from its template, scoped like the dashboard."""
    text = RULES_TEMPLATE.read_text()
    scope = '{namespace="$namespace", app_kubernetes_io_instance="$release"}'
    rules: dict[str, Node] = {}
    for name, expr in re.findall(r"- record: (\S+)\n\s+expr: \|-\n\s+(.+)", text):
        expr = expr.replace("{ {{- $sel -}} }", scope)
        rules[name] = Parser(substitute(expr, variables)).parse()
    if not rules:
        raise RuntimeError(f"no recording rules found in {RULES_TEMPLATE}")
    return rules


def legend(template: str, labels: Labels) -> str:
    values = dict(labels)
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values.get(m.group(1), ""), template or "")
    return text.strip() or ", ".join(f"{k}={v}" for k, v in sorted(values.items()) if k != "__name__")


# ---------------------------------------------------------------------------
# The local run


@dataclass
class Run:
    """Everything one local run produced: the series and the load phases (start, end, name)."""

    store: SeriesStore
    phases: list[tuple[float, float, str]]
    end: float


def save_run(run: Run, path: Path) -> None:
    series = [{"labels": dict(labels), "points": points} for labels, points in run.store.series.items()]
    path.write_text(json.dumps({"series": series, "phases": run.phases, "end": run.end}))


def load_run(path: Path) -> Run:
    saved = json.loads(path.read_text())
    store = SeriesStore({frozenset(s["labels"].items()): [(t, v) for t, v in s["points"]] for s in saved["series"]})
    return Run(store, [(a, b, name) for a, b, name in saved["phases"]], float(saved["end"]))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_loop(store: SeriesStore, urls: list[str], t0: float, stop: threading.Event) -> None:
    """Every second, each URL's exposition into ``store`` (time in seconds since ``t0``)."""
    while not stop.is_set():
        tick = time.monotonic()
        for url in urls:
            try:
                with urllib.request.urlopen(url, timeout=0.8) as response:
                    store.add_exposition(tick - t0, response.read().decode(), TARGET)
            except OSError:
                pass  # not up yet (or going away): no samples, as Prometheus would record
        stop.wait(max(0.0, 1.0 - (time.monotonic() - tick)))


def client_loop(port: int, until: float, pause_s: float) -> None:
    """Requests to the toy model, one at a time, until ``until`` (monotonic)."""
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = httpclient.InferInput("INPUT", [64], "FP32")
    tensor.set_data_from_numpy(np.arange(64, dtype=np.float32))
    try:
        while time.monotonic() < until:
            client.infer("toy_tp", [tensor])
            time.sleep(pause_s)
    finally:
        client.close()


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the launcher exited with {proc.returncode} before rank 0 was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"rank 0 not ready after {timeout_s}s")


# (name, seconds, concurrent clients, pause between one client's requests)
LOAD_PHASES = (("idle", 10.0, 0, 0.0), ("load", 20.0, 1, 0.05), ("heavier load", 20.0, 4, 0.0), ("idle", 10.0, 0, 0.0))


def drive_load(http_port: int, t0: float) -> list[tuple[float, float, str]]:
    phases = []
    for name, seconds, clients, pause in LOAD_PHASES:
        start = time.monotonic()
        until = start + seconds
        threads = [threading.Thread(target=client_loop, args=(http_port, until, pause), daemon=True)
                   for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 30)
        time.sleep(max(0.0, until - time.monotonic()))
        phases.append((start - t0, time.monotonic() - t0, name))
    return phases


def local_run(ranks: int = 2) -> Run:
    """Start `launcher local`, scrape it through a load, stop it; return what was scraped."""
    http, grpc, metrics, health = (free_port() for _ in range(4))
    argv = [str(REPO / ".venv" / "bin" / "python"), "-m", "launcher", "local", f"--ranks={ranks}",
            f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}", f"--health-port={health}"]
    store = SeriesStore()
    stop = threading.Event()
    with tempfile.TemporaryFile() as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        urls = [f"http://127.0.0.1:{metrics}/metrics", f"http://127.0.0.1:{health}/metrics"]
        scraper = threading.Thread(target=scrape_loop, args=(store, urls, t0, stop), daemon=True)
        scraper.start()
        try:
            wait_ready(http, proc)
            phases = drive_load(http, t0)
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            stop.set()
            scraper.join(5)
            end = time.monotonic() - t0
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return Run(store, phases, end)


# ---------------------------------------------------------------------------
# Panels


@dataclass
class PanelData:
    """One panel's evaluated targets: (legend, points) per series, or why there are none."""

    series: list[tuple[str, Points]] = field(default_factory=list)
    problem: str = ""


def evaluate_panel(panel: dict[str, Any], evaluator: Evaluator, times: list[float]) -> PanelData:
    data = PanelData()
    for target in panel.get("targets", []):
        try:
            expr = substitute(target["expr"], VARIABLES)
            result = evaluate_range(evaluator, expr, times)
        except Unsupported as error:
            return PanelData(problem=f"cannot evaluate this panel's PromQL here:\n{error}")
        for labels, points in sorted(result.items(), key=lambda item: legend(target.get("legendFormat", ""), item[0])):
            data.series.append((legend(target.get("legendFormat", ""), labels), points))
    if not data.series:
        data.problem = "no data in a local run" + (
            " (no worker pods)" if "worker" in json.dumps(panel.get("targets", [])) else "")
    return data


def unit_label(panel: dict[str, Any]) -> str:
    unit = str(panel.get("fieldConfig", {}).get("defaults", {}).get("unit", ""))
    return {"s": "seconds", "reqps": "requests/s", "µs": "µs", "short": ""}.get(unit, unit)


def draw_panel(ax: Any, panel: dict[str, Any], data: PanelData, run: Run) -> None:
    ax.set_title(panel["title"], loc="left", fontsize=10, fontweight="bold")
    if data.problem:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, data.problem, ha="center", va="center", fontsize=9, color="0.4",
                transform=ax.transAxes, wrap=True)
        return
    kind = panel["type"]
    if kind == "timeseries":
        draw_timeseries(ax, panel, data, run)
    elif kind == "state-timeline":
        draw_state_timeline(ax, data, run)
    elif kind == "stat":
        draw_stat(ax, panel, data)
    elif kind == "bargauge":
        draw_bars(ax, panel, data)
    else:
        draw_table(ax, data)


def shade_phases(ax: Any, run: Run) -> None:
    for start, end, name in run.phases:
        if name != "idle":
            ax.axvspan(start, end, color="0.93", zorder=0)
            ax.text((start + end) / 2, 0.02, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7, color="0.45")


def draw_timeseries(ax: Any, panel: dict[str, Any], data: PanelData, run: Run) -> None:
    shade_phases(ax, run)
    styles = ["-", "--", ":", "-."]
    for i, (name, points) in enumerate(data.series):
        ax.plot([t for t, _ in points], [v for _, v in points], label=name, linewidth=1.4,
                linestyle=styles[i % len(styles)])
    top = max((v for _, points in data.series for _, v in points if math.isfinite(v)), default=0.0)
    ax.set_xlim(0, run.end)
    ax.set_ylim(0, top * 1.35 or 1.0)
    ax.set_ylabel(unit_label(panel), fontsize=8)
    ax.set_xlabel("seconds since launch", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)


def spans(points: Points, step: float) -> list[tuple[float, float]]:
    """Consecutive sample times (``step`` apart) merged into (start, width) spans."""
    merged: list[tuple[float, float]] = []
    for t, _ in points:
        if merged and t - (merged[-1][0] + merged[-1][1]) < step / 2:
            merged[-1] = (merged[-1][0], t + step - merged[-1][0])
        else:
            merged.append((t, step))
    return merged


def draw_state_timeline(ax: Any, data: PanelData, run: Run, step: float = 1.0) -> None:
    """Grafana's state timeline for one pod: each state a coloured span, named inside it."""
    colours = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0"]
    for i, (name, points) in enumerate(data.series):
        state = name.split()[-1]
        for start, width in spans(points, step):
            ax.broken_barh([(start, width)], (0, 1), color=colours[i % len(colours)])
            ax.text(start + width / 2, 0.5, state, ha="center", va="center", fontsize=8,
                    rotation=0 if width > run.end / 12 else 90)
    ax.set_xlim(0, run.end)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_title(" ".join(data.series[0][0].split()[:-1]), loc="right", fontsize=8, color="0.4")
    ax.set_xlabel("seconds since launch", fontsize=8)
    ax.tick_params(labelsize=7)


def format_value(value: float, unit: str) -> str:
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{text} {unit}".strip()


def draw_stat(ax: Any, panel: dict[str, Any], data: PanelData) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    unit = "s" if unit_label(panel) == "seconds" else ""
    lines = [(name, format_value(points[-1][1], unit)) for name, points in data.series]
    for i, (name, value) in enumerate(lines):
        y = 0.55 - i * 0.3
        ax.text(0.5, y, value, ha="center", va="center", fontsize=22, color="#1f78c1", transform=ax.transAxes)
        ax.text(0.5, y - 0.17, name, ha="center", va="center", fontsize=7, color="0.4", transform=ax.transAxes)


def draw_bars(ax: Any, panel: dict[str, Any], data: PanelData) -> None:
    names = [name for name, _ in data.series]
    values = [points[-1][1] for _, points in data.series]
    ax.barh(range(len(values)), values, color="#7eb26d")
    ax.set_yticks(range(len(values)))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(unit_label(panel) + " (at the end of the run)", fontsize=8)
    ax.tick_params(labelsize=7)
    for i, value in enumerate(values):
        ax.text(value, i, f" {value:.2f}", va="center", fontsize=7)


def draw_table(ax: Any, data: PanelData) -> None:
    ax.axis("off")
    rows = [[name.replace(", ", "\n")] for name, _ in data.series]
    table = ax.table(cellText=rows, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.scale(1, 6)


def render(run: Run, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads(DASHBOARD.read_text())
    evaluator = Evaluator(run.store, chart_recording_rules(VARIABLES))
    times = [float(t) for t in range(0, int(run.end) + 1)]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    unit = 0.42  # inches per grid row
    fig = plt.figure(figsize=(22, rows * unit + 1.2))
    grid = fig.add_gridspec(rows, 24, left=0.04, right=0.99, top=1 - 0.9 / (rows * unit + 1.2), bottom=0.04,
                            hspace=4.0, wspace=2.0)
    for panel in board["panels"]:
        pos = panel["gridPos"]
        if panel["type"] == "row":
            fig.text(0.04 + 0.95 * pos["x"] / 24, grid[pos["y"], 0].get_position(fig).y1, panel["title"],
                     fontsize=12, fontweight="bold", va="top")
            continue
        ax = fig.add_subplot(grid[pos["y"] + 1:pos["y"] + pos["h"], pos["x"]:pos["x"] + pos["w"]])
        draw_panel(ax, panel, evaluate_panel(panel, evaluator, times), run)
    fig.suptitle(f"{board['title']}: {CAPTION}", x=0.04, ha="left", fontsize=13)
    fig.text(0.99, 0.985, f"`launcher local --ranks 2` (toy model), {run.end:.0f} s scraped every second; load phases "
             f"shaded; $__rate_interval = {VARIABLES['__rate_interval']}; series labelled as the chart's PodMonitor "
             "would label them", ha="right", va="top", fontsize=8, color="0.4")
    fig.savefig(output, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "dashboard.png")
    parser.add_argument("--save-run", type=Path, help="also write the scraped series to this JSON file")
    parser.add_argument("--from-run", type=Path, help="render a run saved with --save-run instead of running")
    args = parser.parse_args()
    run = load_run(args.from_run) if args.from_run else local_run()
    if args.save_run:
        save_run(run, args.save_run)
    print(f"scraped {len(run.store.series)} series over {run.end:.0f}s; phases {run.phases}")
    render(run, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
