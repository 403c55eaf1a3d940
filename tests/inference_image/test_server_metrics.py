"""ServerMetrics: cached label children still count per label set, and render as before."""

from __future__ import annotations

from inference_server.metrics import ServerMetrics


def test_cached_children_count_per_label_set() -> None:
    """Repeated observations accumulate on one child; other models, statuses and error types stay apart."""
    m = ServerMetrics(lambda: 2, lambda: 1)
    m.observe("alpha", 200, 0.2, 0.01, 5)
    m.observe("alpha", 200, 0.3, None, 0)
    m.observe("beta", 200, 0.1, 0.02, 3)
    m.error("alpha", 503, "unavailable")
    m.error("", 404, "model_not_found")
    m.error("", 404, "model_not_found")
    text = m.render().decode()
    assert 'inference_requests_total{model="alpha",status="200"} 2.0' in text
    assert 'inference_requests_total{model="beta",status="200"} 1.0' in text
    assert 'inference_requests_total{model="alpha",status="503"} 1.0' in text
    assert 'inference_requests_total{model="",status="404"} 2.0' in text
    assert 'inference_errors_total{type="model_not_found"} 2.0' in text
    assert 'inference_errors_total{type="unavailable"} 1.0' in text
    assert 'inference_generated_tokens_total{model="alpha"} 5.0' in text
    assert 'inference_generated_tokens_total{model="beta"} 3.0' in text
    assert "inference_request_latency_seconds_count 3.0" in text
    assert "inference_time_to_first_token_seconds_count 2.0" in text
    assert "inference_loaded_adapters 2.0" in text and "inference_in_flight_requests 1.0" in text


def test_apps_do_not_share_children() -> None:
    """Each app's metrics (and its cache) are its own."""
    first, second = ServerMetrics(lambda: 0, lambda: 0), ServerMetrics(lambda: 0, lambda: 0)
    first.observe("alpha", 200, 0.1, None, 1)
    assert 'inference_requests_total{model="alpha",status="200"}' not in second.render().decode()
