"""Merging the expositions of several workers (``eventbus run --workers N --metrics-port``):
what adds up, what takes the largest, what is recomputed."""

from prometheus_client.parser import text_string_to_metric_families

from eventbus.metrics.merge import merge, render

L = 'destination="jobs",kind="queue",group="",handler="work"'


def worker(handled: int, in_flight: int, lag: int, age: float, le_1: int) -> str:
    return f"""# HELP eventbus_handled_messages_total x
# TYPE eventbus_handled_messages_total counter
eventbus_handled_messages_total{{{L}}} {handled}
# HELP eventbus_in_flight_messages x
# TYPE eventbus_in_flight_messages gauge
eventbus_in_flight_messages{{{L}}} {in_flight}
# HELP eventbus_in_flight_limit x
# TYPE eventbus_in_flight_limit gauge
eventbus_in_flight_limit{{{L}}} 4
# HELP eventbus_in_flight_saturation_ratio x
# TYPE eventbus_in_flight_saturation_ratio gauge
eventbus_in_flight_saturation_ratio{{{L}}} {in_flight / 4}
# HELP eventbus_oldest_unsettled_age_seconds x
# TYPE eventbus_oldest_unsettled_age_seconds gauge
eventbus_oldest_unsettled_age_seconds{{{L}}} {age}
# HELP eventbus_consumer_lag_messages x
# TYPE eventbus_consumer_lag_messages gauge
eventbus_consumer_lag_messages{{destination="jobs",group="g",partition="0"}} {lag}
# HELP eventbus_process_duration_seconds x
# TYPE eventbus_process_duration_seconds histogram
eventbus_process_duration_seconds_bucket{{{L},le="1.0"}} {le_1}
eventbus_process_duration_seconds_bucket{{{L},le="+Inf"}} {handled}
eventbus_process_duration_seconds_count{{{L}}} {handled}
eventbus_process_duration_seconds_sum{{{L}}} 0.5
"""


def test_counters_histograms_in_flight_add_up_backlog_and_age_take_the_largest() -> None:
    text = render(merge([worker(10, 1, 7, 2.5, 9), worker(5, 3, 6, 4.0, 5)])).decode()
    samples = {
        (s.name, s.labels.get("le", s.labels.get("partition", ""))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("eventbus_handled_messages_total", "")] == 15
    assert samples[("eventbus_in_flight_messages", "")] == 4
    assert samples[("eventbus_in_flight_limit", "")] == 8
    assert samples[("eventbus_in_flight_saturation_ratio", "")] == 0.5  # 4 / 8, not 0.25 + 0.75
    assert samples[("eventbus_oldest_unsettled_age_seconds", "")] == 4.0
    assert samples[("eventbus_consumer_lag_messages", "0")] == 7
    assert samples[("eventbus_process_duration_seconds_bucket", "1.0")] == 14
    assert samples[("eventbus_process_duration_seconds_bucket", "+Inf")] == 15
    assert samples[("eventbus_process_duration_seconds_count", "")] == 15
    assert samples[("eventbus_process_duration_seconds_sum", "")] == 1.0


def test_no_worker_answering_renders_an_empty_exposition() -> None:
    assert render(merge([])) == b""
