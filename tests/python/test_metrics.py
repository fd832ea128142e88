"""zerocopyd's Prometheus metrics: the real endpoint scraped over HTTP and
parsed by a real Prometheus text parser (prometheus_client's), its counters
moved by real requests (the CLI's and the package's), `zerocopy stats
--prometheus` agreeing with it, `off` serving nothing, a port that is taken
costing the metrics and nothing else, and the dashboard and alert rules of
deploy/monitoring naming only metrics a scrape has."""
import gc
import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import save_file

from conftest import BUILD, Daemon
from ray_zerocopy import _store

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
GPU = "GPU-3c3c3c3c-3333-4333-8333-333333333333"
MiB = 1 << 20


@pytest.fixture(scope="module")
def metrics_daemon(tmp_path_factory):
    fake_dir = tmp_path_factory.mktemp("fake-gpu")
    d = Daemon(host_budget="20M", metrics_address="127.0.0.1:0",
               config=f'gpu_backend = "fake"\nfake_gpus = ["{GPU}"]\nfake_gpu_memory = "64M"\n'
                      f'fake_gpu_dir = "{fake_dir}"\n')
    d.tmp = tmp_path_factory.mktemp("models")
    yield d
    d.stop()


def stats(d) -> dict:
    r = d.run_cli("--json", "stats")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def scrape_text(d) -> str:
    address = stats(d)["metrics_address"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        # The text format (prometheus-cpp names no version).
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def scrape(d) -> dict:
    return families(scrape_text(d))


def value(fams: dict, sample: str, **labels) -> float:
    """The sample's value (0 when it is not there yet: a counter that has
    not moved for these labels)."""
    for f in fams.values():
        for s in f.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def model_file(d, name: str, mib: int, seed: int) -> str:
    path = d.tmp / f"{name}.safetensors"
    torch.manual_seed(seed)
    save_file({"w": torch.randn(mib * MiB // 4)}, str(path))
    return str(path)


def test_the_endpoint_speaks_prometheus_text_with_conventional_names(metrics_daemon):
    fams = scrape(metrics_daemon)
    ours = {n: f for n, f in fams.items() if n.startswith("zerocopy_")}
    # prometheus-cpp adds its own exposer_* families (scrapes served); every
    # other family is ours.
    assert set(fams) - set(ours) <= {"exposer_transferred_bytes", "exposer_scrapes", "exposer_request_latencies"}
    expected = {
        "zerocopy_info": "gauge", "zerocopy_start_time_seconds": "gauge",
        "zerocopy_host_used_bytes": "gauge", "zerocopy_host_staging_bytes": "gauge",
        "zerocopy_host_budget_bytes": "gauge", "zerocopy_segment_dir_free_bytes": "gauge",
        "zerocopy_models": "gauge", "zerocopy_pinned_models": "gauge", "zerocopy_sessions": "gauge",
        "zerocopy_host_leases": "gauge",
        "zerocopy_evictions": "counter", "zerocopy_evicted_bytes": "counter", "zerocopy_pulls": "counter",
        "zerocopy_pulled_bytes": "counter", "zerocopy_commits": "counter", "zerocopy_deduplicated_commits": "counter",
        "zerocopy_published_bytes": "counter", "zerocopy_publish_seconds": "counter",
        "zerocopy_gpu_used_bytes": "gauge", "zerocopy_gpu_budget_bytes": "gauge", "zerocopy_gpu_memory_bytes": "gauge",
        "zerocopy_gpu_copies": "gauge", "zerocopy_gpu_leases": "gauge", "zerocopy_gpu_uploads": "counter",
        "zerocopy_gpu_uploaded_bytes": "counter", "zerocopy_gpu_upload_seconds": "counter",
        "zerocopy_gpu_evictions": "counter",
        "zerocopy_requests": "counter", "zerocopy_request_duration_seconds": "histogram",
    }
    assert {n: f.type for n, f in ours.items()} == expected
    for name, f in ours.items():
        assert re.fullmatch(r"zerocopy_[a-z_]+", name), name
        assert f.documentation, f"{name} has no HELP"
        for s in f.samples:
            if f.type == "counter":
                assert s.name == name + "_total", s.name  # the parser strips _total from the family
            # Units in the name, base units only.
            assert not re.search(r"_(ms|us|milliseconds|kib|mib|gib)(_|$)", s.name), s.name
    assert value(fams, "zerocopy_host_budget_bytes") == 20 * MiB
    assert value(fams, "zerocopy_info", gpu_backend="fake") == 1
    # Every method has its histogram, cumulative, ending at +Inf with the count.
    methods = {s.labels["method"] for s in ours["zerocopy_request_duration_seconds"].samples}
    assert {"CreateModel", "CommitModel", "GetModel", "DeleteModel", "GetStats"} <= methods
    buckets = [s for s in ours["zerocopy_request_duration_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["method"] == "GetStats"]
    bounds = [float(s.labels["le"]) for s in buckets]
    assert bounds == sorted(bounds) and bounds[-1] == float("inf") and bounds[0] <= 100e-6
    counts = [s.value for s in buckets]
    assert counts == sorted(counts)
    assert counts[-1] == value(fams, "zerocopy_request_duration_seconds_count", method="GetStats") >= 1


def test_counters_move_with_the_requests_that_move_them(metrics_daemon):
    d = metrics_daemon
    before = scrape(d)
    first = model_file(d, "first", 12, seed=1)
    r = d.run_cli("preload", first, "--name", "first")
    assert r.returncode == 0, r.stderr
    assert d.run_cli("inspect", "first").returncode == 0                # GetModel OK
    missing = d.run_cli("inspect", "no-such-model")
    assert missing.returncode != 0                                      # GetModel NOT_FOUND
    mid = scrape(d)
    size = 12 * MiB  # the tensor's bytes (the file's header is not kept)

    def moved(sample, **labels):
        return value(mid, sample, **labels) - value(before, sample, **labels)

    assert moved("zerocopy_requests_total", method="CreateModel", code="OK") == 1
    assert moved("zerocopy_requests_total", method="CommitModel", code="OK") == 1
    assert moved("zerocopy_requests_total", method="GetModel", code="OK") == 1
    assert moved("zerocopy_requests_total", method="GetModel", code="NOT_FOUND") == 1
    assert moved("zerocopy_request_duration_seconds_count", method="GetModel") == 2
    assert moved("zerocopy_request_duration_seconds_sum", method="GetModel") > 0
    assert moved("zerocopy_commits_total", origin="preloaded") == 1
    assert moved("zerocopy_published_bytes_total", origin="preloaded") == size
    assert moved("zerocopy_publish_seconds_total", origin="preloaded") > 0
    assert value(mid, "zerocopy_models") == 1 and value(mid, "zerocopy_host_used_bytes") == size

    # A second model that does not fit beside the first evicts it.
    second = model_file(d, "second", 12, seed=2)
    assert d.run_cli("preload", second, "--name", "second", "--pin").returncode == 0
    after = scrape(d)
    assert value(after, "zerocopy_evictions_total") - value(mid, "zerocopy_evictions_total") == 1
    assert value(after, "zerocopy_evicted_bytes_total") - value(mid, "zerocopy_evicted_bytes_total") == size
    assert value(after, "zerocopy_pinned_models") == 1 and value(after, "zerocopy_models") == 1

    # A deletion (forced: pinned), and one refused (pinned, no force).
    assert d.run_cli("rm", "second").returncode != 0
    assert d.run_cli("rm", "second", "--force").returncode == 0
    done = scrape(d)
    assert value(done, "zerocopy_requests_total", method="DeleteModel", code="FAILED_PRECONDITION") == 1
    assert value(done, "zerocopy_requests_total", method="DeleteModel", code="OK") == 1
    assert value(done, "zerocopy_models") == 0 and value(done, "zerocopy_pinned_models") == 0
    assert value(done, "zerocopy_host_used_bytes") == 0
    # GetStats' own error count agrees with the codes.
    errors = sum(s.value for s in done["zerocopy_requests"].samples if s.labels["code"] != "OK")
    assert int(stats(d)["errors"]) == errors  # uint64: a string in protobuf JSON


def test_gpu_copies_and_their_uploads_are_counted(metrics_daemon, monkeypatch):
    d = metrics_daemon
    monkeypatch.setenv("ZEROCOPY_FAKE_GPUS", GPU)
    torch.manual_seed(3)
    model = torch.nn.Linear(256, 256)
    info = _store.publish(model, name="linear", socket=d.socket)
    state = _store.load_state_dict("linear", socket=d.socket, device="cuda:0")
    fams = scrape(d)
    assert value(fams, "zerocopy_gpu_uploads_total", gpu=GPU) == 1
    assert value(fams, "zerocopy_gpu_uploaded_bytes_total", gpu=GPU) == info["size"]
    assert value(fams, "zerocopy_gpu_upload_seconds_total", gpu=GPU) > 0
    assert value(fams, "zerocopy_gpu_copies", gpu=GPU) == 1
    assert value(fams, "zerocopy_gpu_leases", gpu=GPU) == 1
    assert value(fams, "zerocopy_gpu_used_bytes", gpu=GPU) == info["size"]
    assert value(fams, "zerocopy_gpu_memory_bytes", gpu=GPU) == 64 * MiB
    assert value(fams, "zerocopy_sessions") >= 1
    assert value(fams, "zerocopy_commits_total", origin="published") == 1
    del state
    gc.collect()
    assert d.run_cli("rm", "linear", "--force").returncode == 0


def test_stats_prometheus_prints_the_same_metrics(metrics_daemon):
    d = metrics_daemon
    r = d.run_cli("stats", "--prometheus")
    assert r.returncode == 0, r.stderr
    printed = families(r.stdout)
    scraped = scrape(d)
    assert set(printed) == {n for n in scraped if n.startswith("zerocopy_")}
    for f in printed.values():
        assert f.type == scraped[f.name].type
    for sample in ("zerocopy_host_budget_bytes", "zerocopy_models", "zerocopy_host_used_bytes",
                   "zerocopy_pinned_models", "zerocopy_evictions_total", "zerocopy_start_time_seconds"):
        assert value(printed, sample) == value(scraped, sample), sample
    assert value(printed, "zerocopy_commits_total", origin="preloaded") == \
        value(scraped, "zerocopy_commits_total", origin="preloaded")
    # And the human form says where the endpoint is.
    address = stats(d)["metrics_address"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", address) and not address.endswith(":0")
    assert f"metrics:    http://{address}/metrics" in d.run_cli("stats").stdout


def tcp_sockets(pid: int) -> list[str]:
    """The TCP sockets (listening or not) process `pid` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            found += [line.split()[1] for line in f if line.split()[9] in inodes]
    return found


def test_off_serves_nothing(daemon):
    # The suite's shared daemon runs with metrics_address = off.
    s = stats(daemon)
    assert s["metrics_address"] == "" and s["metrics_error"] == ""
    assert tcp_sockets(daemon.proc.pid) == []
    assert "metrics:    off" in daemon.run_cli("stats").stdout
    # The exposition is still there through the socket.
    r = daemon.run_cli("stats", "--prometheus")
    assert r.returncode == 0 and "zerocopy_models" in families(r.stdout)


def test_a_taken_port_costs_the_metrics_not_the_models(metrics_daemon):
    taken = stats(metrics_daemon)["metrics_address"]
    d = Daemon(metrics_address=taken)
    try:
        s = stats(d)
        assert s["metrics_address"] == ""
        assert f"cannot listen on {taken}" in s["metrics_error"] and "in use" in s["metrics_error"]
        assert "not served: cannot listen" in d.run_cli("stats").stdout
        log = (d.dir / "zerocopyd.log").read_text()
        assert re.search(r"error metrics not served: cannot listen on " + re.escape(taken), log), log
        # Weight sharing goes on.
        path = model_file(metrics_daemon, "still", 1, seed=4)
        assert d.run_cli("preload", path, "--name", "still").returncode == 0
        assert d.run_cli("inspect", "still").returncode == 0
    finally:
        d.stop()


def test_a_bad_address_is_refused_at_start():
    for bad in ("9479", "localhost:9479", "127.0.0.1:70000", "127.0.0.1:", "[::1:9479"):
        r = subprocess.run([str(BUILD / "daemon/zerocopyd"), "--metrics-address", bad, "--print-config"],
                           capture_output=True, text=True)
        assert r.returncode == 2 and "--metrics-address" in r.stderr, (bad, r.stderr)


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label names and
    functions are not metric names)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)                 # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    return set(re.findall(r"\b(?:zerocopy_[a-z_]+|up)\b", expr))


def scraped_names(fams: dict) -> set[str]:
    names = {s.name for f in fams.values() for s in f.samples}
    return names | {n + "_total" for n, f in fams.items() if f.type == "counter"} | set(fams)


def test_the_dashboard_and_rules_name_only_real_metrics(metrics_daemon):
    names = scraped_names(scrape(metrics_daemon)) | {"up"}
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))
    walk(dashboard["panels"])
    assert len(exprs) >= 8
    rules = yaml.safe_load((MONITORING / "zerocopy-rules.yaml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} >= {"ZerocopyBudgetNearlyFull", "ZerocopyDaemonDown", "ZerocopyErrorRate"}
    for a in alerts:
        assert a["labels"]["severity"] and a["annotations"]["summary"], a["alert"]
        exprs.append(a["expr"])
    for expr in exprs:
        used = promql_metrics(expr)
        assert used, expr
        assert used <= names, (expr, used - names)
