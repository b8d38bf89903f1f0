"""The ground modules every floor shares: times, references, platforms, progress lines."""

import calendar
import time

import pytest

from minidock import errors, platforms, progress, reference, times


# -- times ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ns,text", [
    (0, "1970-01-01T00:00:00Z"),
    (1_700_000_000_123_456_789, "2023-11-14T22:13:20.123456789Z"),
    (1_700_000_000_100_000_000, "2023-11-14T22:13:20.1Z"),          # trailing zeros trimmed, as Go
    (1_700_000_000_000_000_001, "2023-11-14T22:13:20.000000001Z"),
])
def test_rfc3339_nano_round_trip(ns, text):
    assert times.format_rfc3339(ns) == text
    assert times.rfc3339_ns(text) == ns


@pytest.mark.parametrize("text,ns", [
    ("2023-11-14T23:13:20.5+01:00", 1_700_000_000_500_000_000),
    ("2023-11-14T21:13:20-01:00", 1_700_000_000_000_000_000),
    ("2023-11-14T22:13:20", 1_700_000_000_000_000_000),             # no zone: UTC
    ("2023-11-14T22:13:20.1234567891Z", 1_700_000_000_123_456_789),  # beyond ns: cut, not rounded
])
def test_rfc3339_zones_and_fractions(text, ns):
    assert times.rfc3339_ns(text) == ns


@pytest.mark.parametrize("text", ["1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2024-02-29T12:00:00Z",
                                  "2016-12-31T23:59:60Z", "9999-12-31T23:59:59+14:00"])
def test_rfc3339_seconds_are_calendar_timegm(text):
    """Before the epoch, leap days, a leap second (the next day's first second, as timegm
    counts it), the ends of the range: the arithmetic is calendar.timegm's."""
    fields = [int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]), int(text[17:19])]
    offset = -14 * 3600 if text.endswith("+14:00") else 0
    assert times.rfc3339_ns(text) == (calendar.timegm(tuple(fields)) + offset) * times.NS


def test_now_has_nanoseconds_and_is_now():
    before = time.time_ns()
    stamp = times.now_rfc3339()
    assert stamp.endswith("Z")
    assert before <= times.rfc3339_ns(stamp) <= time.time_ns()


@pytest.mark.parametrize("text,ns", [
    (None, None), ("", None), ("1700000000", 1_700_000_000 * times.NS),
    ("1700000000.5", 1_700_000_000_500_000_000), ("1700000000.000000001", 1_700_000_000_000_000_001),
    ("2023-11-14T22:13:20Z", 1_700_000_000 * times.NS),
])
def test_api_timestamps(text, ns):
    assert times.parse_timestamp(text) == ns


@pytest.mark.parametrize("bad", ["yesterday", "17e8", "1700000000.x", "2023-13-45", "2023-02-30T00:00:00Z"])
def test_api_timestamps_refuse_garbage(bad):
    with pytest.raises(errors.InvalidParameter, match="invalid timestamp"):
        times.parse_timestamp(bad)


def test_malformed_times_are_zero_where_records_may_lack_them():
    assert times.rfc3339_seconds("") == 0.0
    assert times.rfc3339_seconds("nonsense", default=-1.0) == -1.0
    assert times.seconds_since("nonsense") == 0.0


@pytest.mark.parametrize("seconds,text", [
    (0.5, "Less than a second"), (1.5, "1 second"), (59, "59 seconds"), (90, "About a minute"),
    (60 * 59, "59 minutes"), (3600 * 1.5, "About an hour"), (3600 * 47, "47 hours"),
    (86400 * 13, "13 days"), (86400 * 50, "7 weeks"), (86400 * 300, "10 months"), (86400 * 800, "2 years"),
])
def test_human_duration(seconds, text):
    assert times.human_duration(seconds) == text


def test_seconds_since_a_recent_stamp():
    stamp = times.format_rfc3339(time.time_ns() - 5 * times.NS)
    assert 4.5 < times.seconds_since(stamp) < 60
    assert calendar.timegm(time.gmtime(0)) == 0


# -- references ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,tag,want", [
    ("busybox", None, ("docker.io", "library/busybox", "latest", None, "busybox:latest")),
    ("library/busybox", None, ("docker.io", "library/busybox", "latest", None, "busybox:latest")),
    ("library/a/b", None, ("docker.io", "library/a/b", "latest", None, "library/a/b:latest")),
    ("index.docker.io/busybox:1", None, ("docker.io", "library/busybox", "1", None, "busybox:1")),
    ("Host.example/app", None, ("Host.example", "app", "latest", None, "Host.example/app:latest")),
    ("app", "sha256:" + "b" * 64, ("docker.io", "library/app", None, "sha256:" + "b" * 64,
                                   "app@sha256:" + "b" * 64)),
    ("app:1@sha256:" + "c" * 64, None, ("docker.io", "library/app", "1", "sha256:" + "c" * 64,
                                        "app@sha256:" + "c" * 64)),
])
def test_reference_parts_and_key(text, tag, want):
    r = reference.parse(text, tag)
    assert (r.domain, r.path, r.tag, r.digest, r.key()) == want


def test_reference_without_default_tag():
    assert reference.parse("busybox", default_tag=False).tag is None
    assert reference.parse("busybox").ref == "latest"
    assert reference.parse("a@sha256:" + "d" * 64).ref == "sha256:" + "d" * 64


@pytest.mark.parametrize("bad,tag,message", [
    ("app@md5:" + "a" * 32, None, "bad digest"), ("app@sha256:" + "a" * 63, None, "bad digest"),
    ("app", "bad tag!", "bad tag"), ("x/" + "a" * 260, None, "not be more than 255"),
    ("app", "sha256:short", "bad digest"),
])
def test_reference_refusals(bad, tag, message):
    with pytest.raises(errors.InvalidParameter, match=message):
        reference.parse(bad, tag)


# -- platforms -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,want", [
    ("linux/amd64", {"os": "linux", "architecture": "amd64"}),
    ("linux/x86_64", {"os": "linux", "architecture": "amd64"}),
    ("linux/aarch64", {"os": "linux", "architecture": "arm64", "variant": "v8"}),
    ("linux/arm/v6", {"os": "linux", "architecture": "arm", "variant": "v6"}),
    ("Linux/ARM64", {"os": "linux", "architecture": "arm64", "variant": "v8"}),
])
def test_platform_parse(text, want):
    assert platforms.parse(text) == want


@pytest.mark.parametrize("bad", ["", "linux/", "a/b/c/d", "/amd64"])
def test_platform_parse_refuses(bad):
    with pytest.raises(errors.InvalidParameter, match="invalid platform"):
        platforms.parse(bad)


def test_platform_of_this_machine():
    import os
    machine = os.uname().machine
    assert platforms.goarch() == platforms.MACHINES.get(machine, (machine, None))[0]
    assert platforms.matches(platforms.parse("linux"), platforms.host())
    assert platforms.matches({"os": "linux", "architecture": "arm64"}, {"os": "linux", "architecture": "arm64",
                                                                         "variant": "v8"})
    assert not platforms.matches({"os": "linux", "architecture": "arm", "variant": "v6"},
                                 {"os": "linux", "architecture": "arm", "variant": "v7"})
    assert platforms.format({"os": "linux", "architecture": "arm", "variant": "v7"}) == "linux/arm/v7"


# -- progress lines --------------------------------------------------------------------------------

def test_error_line_from_kinds_messages_and_codes():
    class StepFailed(errors.InvalidParameter):
        code = 3
    assert progress.error_line("boom") == {"error": "boom", "errorDetail": {"message": "boom"}}
    assert progress.error_line(errors.NotFound("gone")) == {"error": "gone", "errorDetail": {"message": "gone"}}
    assert progress.error_line(StepFailed("RUN failed")) == {"error": "RUN failed",
                                                              "errorDetail": {"message": "RUN failed", "code": 3}}
    assert progress.error_line(ValueError("odd"))["error"] == "ValueError: odd"
    assert progress.error_line(ValueError())["error"] == "ValueError"


def test_reporter_funnels_status_lines():
    lines = []
    say = progress.Reporter(lines.append)
    say("Downloading", "abc", 5, 10)
    say.raw({"status": "Digest: x"})
    assert lines[0]["progressDetail"] == {"current": 5, "total": 10} and lines[1] == {"status": "Digest: x"}
    assert progress.human_size(1_049_000) == "1.049MB"


@pytest.mark.parametrize("text,ns", [
    ("0", 0), ("30s", 30 * times.NS), ("1m30s", 90 * times.NS), ("1.5h", 5400 * times.NS),
    ("300ms", 300_000_000), ("-2us", -2000), ("1µs", 1000),
])
def test_go_durations(text, ns):
    assert times.parse_duration(text) == ns


@pytest.mark.parametrize("bad,message", [("", "invalid duration"), ("10", "missing unit"), ("5y", "unknown unit"),
                                         (".s", "invalid duration")])
def test_go_durations_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        times.parse_duration(bad)


def test_go_times_do_not_sort_as_strings():
    """Why nothing may sort RFC 3339 strings: Go trims the fraction, so text order is not time
    order (containers are listed by the parsed time)."""
    early, late = times.format_rfc3339(1_700_000_000_100_000_000), times.format_rfc3339(1_700_000_000_120_000_000)
    assert early > late                                    # as text
    assert times.rfc3339_ns(early) < times.rfc3339_ns(late)
