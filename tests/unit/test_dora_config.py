"""DORA configuration (FLOW_DORA_FILE) and the deployment frequency band."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from api.dora_queries import frequency_band
from processor.dora import DoraConfig, DoraConfigError, load_dora_config

MONDAY = date(2026, 3, 2)


def test_defaults_without_a_file() -> None:
    """No file: prod|production, a 48-hour window, redeploy rollbacks on, repo = team."""
    config = load_dora_config(None)
    assert config == DoraConfig()
    assert config.incident_window == timedelta(hours=48)
    assert config.is_production("Production") and not config.is_production("staging")
    assert config.detect_redeploy_rollbacks
    assert config.team_for("acme/shop", "shop") == "acme/shop"
    assert config.team_for(None, "shop") == "shop"


def test_file_sets_every_option(tmp_path: Path) -> None:
    """Each documented key of the TOML file takes effect."""
    path = tmp_path / "dora.toml"
    path.write_text(
        'production_pattern = "prod(-\\\\w+)?"\n'
        "incident_window_hours = 24.5\n"
        "detect_redeploy_rollbacks = false\n"
        "[teams]\n"
        '"acme/shop" = "checkout"\n'
        'payments = "money"\n'
    )
    config = load_dora_config(path)
    assert config.is_production("prod-eu") and not config.is_production("production")
    assert config.incident_window == timedelta(hours=24.5)
    assert not config.detect_redeploy_rollbacks
    assert config.team_for("acme/shop", "payments") == "checkout"
    assert config.team_for("acme/pay", "payments") == "money"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("production_pattern = '('", "production_pattern"),
        ("incident_window_hours = 0", "incident_window_hours"),
        ("incident_window_hours = true", "incident_window_hours"),
        ("detect_redeploy_rollbacks = 'yes'", "detect_redeploy_rollbacks"),
        ("prod_pattern = 'x'", "unknown keys"),
        ("[teams]\nx = 1", "teams"),
        ("this is not toml", "dora.toml"),
    ],
)
def test_bad_configuration_is_refused_naming_the_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    """A mistake in the file stops start-up with a message naming the entry."""
    path = tmp_path / "dora.toml"
    path.write_text(text)
    with pytest.raises(DoraConfigError, match=message):
        load_dora_config(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    """A configured file that does not exist is an error, not the defaults."""
    with pytest.raises(DoraConfigError):
        load_dora_config(tmp_path / "absent.toml")


# --- the band -----------------------------------------------------------------------


def weeks(n: int, start: date = MONDAY) -> tuple[datetime, datetime]:
    begin = datetime(start.year, start.month, start.day, tzinfo=UTC)
    return begin, begin + timedelta(weeks=n)


def on(*offsets: int, start: date = MONDAY) -> list[date]:
    return [start + timedelta(days=o) for o in offsets]


def test_no_deployment_has_no_band() -> None:
    """Without a single successful production deployment there is nothing to classify."""
    assert frequency_band([], *weeks(4)) is None


def test_three_deployment_days_in_the_median_week_is_daily() -> None:
    """Median deployment days per week ≥ 3 → daily."""
    days = [d for w in range(4) for d in on(7 * w, 7 * w + 1, 7 * w + 2)]
    assert frequency_band(days, *weeks(4)) == "daily"


def test_two_days_a_week_is_weekly() -> None:
    """Deployments every week, but on fewer than 3 days in the median week → weekly."""
    days = [d for w in range(4) for d in on(7 * w, 7 * w + 3)]
    assert frequency_band(days, *weeks(4)) == "weekly"


def test_half_the_weeks_is_monthly() -> None:
    """Two of four weeks: the median week has none (0.5 < 1) but its month has → monthly."""
    assert frequency_band(on(0, 7), *weeks(4)) == "monthly"


def test_one_week_in_three_months_is_yearly() -> None:
    """One deployed week in a quarter: the median week's month had none → yearly."""
    assert frequency_band(on(0), *weeks(13)) == "yearly"


def test_partial_weeks_at_the_edges_are_weeks() -> None:
    """A range starting on a Thursday: its first, short week is a week of its own."""
    start = datetime(2026, 3, 5, tzinfo=UTC)  # Thursday
    end = start + timedelta(days=7)  # → Thursday: two partial weeks
    # [3 days, 0 days]: median 1.5 days, and the median week (0.5) had no deployment.
    assert frequency_band(on(3, 4, 5), start, end) == "monthly"
    assert frequency_band(on(3, 4, 5, 7, 8, 9), start, end) == "daily"
