"""The node's HTTP side over a real socket: a real uvicorn HttpServer on a free port, queried with urllib."""
from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import pytest

from edgeinfer.node.http import HttpServer, NodeView, make_app
from edgeinfer.node.metrics import NodeMetrics

CANARY = "CANARY-PatientName^Doe-1.2.826.0.1.3680043.99"

#: no proxy, whatever the environment says: the requests go to 127.0.0.1
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FakeView:
    def __init__(self) -> None:
        self.metrics = NodeMetrics()
        self.reasons: list[str] = []
        self.fail: set[str] = set()  # names of the methods that raise
        self.queries: list[dict] = []  # what /worklist asked worklist() for
        self.list = {"edgeinfer": "0.1.0", "created": "2026-01-01T00:00:00+00:00", "bundle": {"name": "phantom"},
                     "run": {"backend": "onnxruntime"},
                     "studies": [{"study": "1.2.3", "priority": "URGENT", "score": 0.93, "images": 2}],
                     "skipped": [], "errors": [], "summary": {"studies": 1, "URGENT": 1}}

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            raise ValueError(f"cannot read {CANARY}")

    def health(self) -> dict:
        self._maybe_fail("health")
        return {"uptime_s": 1.5, "version": "0.1.0"}

    def readiness(self) -> list[str]:
        self._maybe_fail("readiness")
        return list(self.reasons)

    def worklist(self, **query) -> dict:
        self._maybe_fail("worklist")
        self.queries.append(query)
        return self.list


def get(url: str, method: str = "GET") -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with _OPENER.open(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


@pytest.fixture
def view():
    return FakeView()


@pytest.fixture
def server(view):
    srv = HttpServer(make_app(view), port=0).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_the_fake_is_a_node_view(view):
    assert isinstance(view, NodeView)


def test_port_zero_binds_a_real_port_on_localhost(server):
    assert server.port > 0 and server.running
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_healthz(server):
    status, headers, body = get(server.url + "/healthz")
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"status": "alive", "uptime_s": 1.5, "version": "0.1.0"}


def test_readyz_ready_then_not_ready_with_reasons(server, view):
    status, _, body = get(server.url + "/readyz")
    assert (status, json.loads(body)) == (200, {"status": "ready"})

    view.reasons = ["spool disk below 5% free", "no model loaded"]
    status, _, body = get(server.url + "/readyz")
    assert status == 503
    assert json.loads(body) == {"status": "not ready", "reasons": ["spool disk below 5% free", "no model loaded"]}

    view.reasons = []
    assert get(server.url + "/readyz")[0] == 200


def test_metrics_are_prometheus_text(server, view):
    view.metrics.instances_total.labels(outcome="stored").inc(3)
    view.metrics.instances_total.labels(outcome="duplicate").inc()
    view.metrics.associations_total.labels(outcome="accepted").inc()
    view.metrics.inference_seconds.observe(0.004)
    view.metrics.arrival_to_result_seconds.observe(12.0)
    view.metrics.studies_total.labels(priority="URGENT").inc()
    view.metrics.outbox_sent_total.labels(destination="PACS1").inc()
    view.metrics.set_study_states({"received": 2, "scored": 1})
    view.metrics.queue_depth.set(4)

    status, headers, body = get(server.url + "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert 'edgeinfer_instances_total{outcome="stored"} 3.0' in text
    assert 'edgeinfer_instances_total{outcome="duplicate"} 1.0' in text
    assert 'edgeinfer_instances_total{outcome="out_of_resources"} 0.0' in text  # present from the start
    assert 'edgeinfer_associations_total{outcome="accepted"} 1.0' in text
    assert 'edgeinfer_inference_seconds_bucket{le="0.001"} 0.0' in text
    assert 'edgeinfer_inference_seconds_bucket{le="0.005"} 1.0' in text
    assert 'edgeinfer_inference_seconds_bucket{le="60.0"} 1.0' in text
    assert 'edgeinfer_inference_seconds_bucket{le="+Inf"} 1.0' in text
    assert 'edgeinfer_arrival_to_result_seconds_bucket{le="20.0"} 1.0' in text
    assert "edgeinfer_arrival_to_result_seconds_count 1.0" in text
    assert 'edgeinfer_studies_total{priority="URGENT"} 1.0' in text
    assert 'edgeinfer_outbox_sent_total{destination="PACS1"} 1.0' in text
    assert 'edgeinfer_studies_in_state{state="received"} 2.0' in text
    assert "edgeinfer_queue_depth 4.0" in text
    # only the node's own registry: no process/platform collectors of the global default one
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert names and all(n.startswith("edgeinfer_") for n in names), names


def test_worklist_round_trips(server, view):
    status, headers, body = get(server.url + "/worklist")
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == view.list


def test_worklist_window_parameters_reach_the_view_and_bad_ones_say_what_to_send(server, view):
    assert get(server.url + "/worklist?since=2026-12-04T08:00:00Z&limit=50&offset=100")[0] == 200
    assert get(server.url + "/worklist?since=1764835200.5")[0] == 200
    assert view.queries[-2:] == [{"since": 1796371200.0, "limit": 50, "offset": 100}, {"since": 1764835200.5}]
    for query, says in (("since=yesterday", "since: expected seconds since the epoch or an ISO 8601 time"),
                        ("limit=0", "limit: expected a whole number from 1 to 10000"),
                        ("limit=20000", "limit: expected a whole number from 1 to 10000"),
                        ("offset=-1", "offset: expected a whole number from 0 up"),
                        ("page=2", "unknown parameter(s) page: /worklist takes since, limit and offset")):
        status, _, body = get(server.url + "/worklist?" + query)
        assert status == 400 and says in json.loads(body)["error"], (query, body)


def test_worklist_pages_are_rendered_once_per_version_and_reused(server, view, monkeypatch):
    from edgeinfer.node import http

    view.worklist_version = 1
    bodies = [get(server.url + "/worklist")[2] for _ in range(5)]
    assert len(view.queries) == 1 and len(set(bodies)) == 1              # four pollers: one render
    get(server.url + "/worklist?limit=10")
    assert len(view.queries) == 2                                        # another page: rendered on its own
    view.list = {**view.list, "summary": {"studies": 2}}
    view.worklist_version = 2                                            # a result was recorded
    monkeypatch.setattr(http._PageCache, "SNAPSHOT_S", 0.0)              # (the 1 s snapshot has passed)
    assert json.loads(get(server.url + "/worklist")[2])["summary"] == {"studies": 2}
    assert len(view.queries) == 3


@pytest.mark.parametrize("path", ["/nope", "/index.html", "/healthz/x", "/worklist.json", "/metrics/../etc/passwd"])
def test_unknown_paths_are_404(server, path):
    status, _, body = get(server.url + path)
    assert status == 404
    assert json.loads(body)["status"] == "error"


def test_other_methods_are_refused(server):
    status, headers, _ = get(server.url + "/worklist", method="POST")
    assert status == 405
    assert "GET" in headers["allow"]


@pytest.mark.parametrize("path,method", [("/healthz", "health"), ("/readyz", "readiness"), ("/worklist", "worklist")])
def test_a_failing_view_answers_500_without_its_message(server, view, caplog, capfd, path, method):
    caplog.set_level(logging.DEBUG)
    view.fail = {method}
    status, headers, body = get(server.url + path)
    assert status == 500
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"status": "error", "error": "internal error"}
    assert CANARY not in body.decode() and "cannot read" not in body.decode()

    server.stop()  # every log line of the request is written by now
    logged = "\n".join(logging.Formatter().format(r) for r in caplog.records)
    assert "ValueError" in logged and path in logged  # the class and the route, for the operator
    assert "in _maybe_fail" in logged  # and where it failed (at DEBUG)
    assert CANARY not in logged and "cannot read" not in logged
    out, err = capfd.readouterr()
    assert CANARY not in out + err


def test_a_failing_metrics_render_answers_500(server, view, monkeypatch):
    def boom():
        raise RuntimeError(CANARY)
    monkeypatch.setattr(view.metrics, "render", boom)
    status, _, body = get(server.url + "/metrics")
    assert status == 500 and CANARY not in body.decode()


def test_non_finite_numbers_in_the_worklist_are_a_500_not_invalid_json(server, view):
    view.list = {**view.list, "studies": [{"study": "1.2.3", "score": float("nan")}]}
    assert get(server.url + "/worklist")[0] == 500
    view.list = {**view.list, "studies": []}
    assert get(server.url + "/worklist")[0] == 200  # and the server goes on serving


def test_stop_frees_the_port(view):
    first = HttpServer(make_app(view), port=0).start()
    port = first.port
    try:
        assert get(first.url + "/healthz")[0] == 200  # a connection was made and closed
    finally:
        first.stop()
    assert not first.running
    first.stop()  # twice is fine

    second = HttpServer(make_app(view), port=port).start()
    try:
        assert second.port == port
        assert get(second.url + "/healthz")[0] == 200
    finally:
        second.stop()


def test_a_taken_port_raises_in_start(server, view):
    with pytest.raises(OSError):
        HttpServer(make_app(view), port=server.port).start()


def test_context_manager_and_no_restart(view):
    with HttpServer(make_app(view), port=0) as srv:
        assert get(srv.url + "/healthz")[0] == 200
    assert not srv.running
    with pytest.raises(RuntimeError):
        srv.start()


def test_two_node_metrics_do_not_collide():
    a, b = NodeMetrics(), NodeMetrics(destinations=["PACS1"], priorities=["URGENT"], states=["received"])
    a.instances_total.labels(outcome="stored").inc(5)
    b.instances_total.labels(outcome="stored").inc()
    text_a, ctype = a.render()
    text_b, _ = b.render()
    assert ctype.startswith("text/plain")
    assert b'edgeinfer_instances_total{outcome="stored"} 5.0' in text_a
    assert b'edgeinfer_instances_total{outcome="stored"} 1.0' in text_b
    assert b'edgeinfer_outbox_dead_letters_total{destination="PACS1"} 0.0' in text_b
    assert b"PACS1" not in text_a


def test_study_states_drop_to_zero_when_gone():
    m = NodeMetrics()
    m.set_study_states({"received": 3, "scoring": 1})
    m.set_study_states({"received": 1})
    text = m.render()[0].decode()
    assert 'edgeinfer_studies_in_state{state="received"} 1.0' in text
    assert 'edgeinfer_studies_in_state{state="scoring"} 0.0' in text


def test_importing_edgeinfer_does_not_import_the_http_stack():
    import subprocess
    import sys
    code = ("import sys, edgeinfer, edgeinfer.cli\n"
            "print(sorted(m for m in ('starlette', 'uvicorn', 'prometheus_client', 'edgeinfer.node')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_console_page_is_html_escaped_and_most_urgent_first(server, view):
    view.list = {**view.list, "bundle": {"name": "phantom-cxr", "version": "0.1.0"},
                 "studies": [{"study_uid": "1.2.3", "priority": "STAT", "score": 0.97, "modality": "DX", "images": [{}],
                              "failed_images": [], "received_last": 1.0},
                             {"study_uid": "<script>alert(1)</script>", "priority": "INDETERMINATE", "score": None,
                              "modality": "CR", "images": [], "failed_images": ["x"], "reason": "watchdog & more"}],
                 "summary": {"by_priority": {"STAT": 1, "URGENT": 0, "INDETERMINATE": 1, "ROUTINE": 0}}}
    status, headers, body = get(server.url + "/")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "watchdog &amp; more" in page and "not for clinical" in page
    assert page.index('data-priority="STAT"') < page.index('data-priority="INDETERMINATE"')
    assert "Patient names and accession numbers are not shown: this HTTP side has no TLS and no login" in page
    assert "/heatmap/" not in page                              # no heatmaps in these results: no thumbnail
    view.reasons = ["the model is not loaded"]
    assert "Not ready: the model is not loaded" in get(server.url + "/")[2].decode()


def test_the_console_links_a_flagged_study_s_strongest_heatmap_and_heatmap_urls_are_checked(server, view):
    heat = {"label": "mass & more", "score": 0.99, "grid": [[0.0]], "peak_rc": [1, 1]}
    view.list = {**view.list, "studies": [{
        "study_uid": "1.2.3", "priority": "STAT", "score": 0.99, "modality": "DX", "failed_images": [], "version": 2,
        "images": [{"sop_instance_uid": "1.2.3.4", "heatmaps": [heat | {"label": "weak", "score": 0.6}, heat]}]}]}
    page = get(server.url + "/")[2].decode()
    assert 'href="/heatmap/1.2.3/1.2.3.4/mass%20%26%20more?v=2"' in page
    assert 'src="/heatmap/1.2.3/1.2.3.4/mass%20%26%20more?v=2&amp;size=96"' in page
    assert get(server.url + "/heatmap/1.2.3/1.2.3.4/mass?size=99999")[0] == 400
    assert get(server.url + "/heatmap/not-a-uid/1.2.3.4/mass")[0] == 404      # the view (no heatmap_png) is not asked
