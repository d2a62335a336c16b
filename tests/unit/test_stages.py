"""Stage configuration: defaults, fallbacks, per-team overrides, and bad files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from processor.stages import (
    REMOVED_STAGE,
    Stage,
    StageConfig,
    StageConfigError,
    TeamFlow,
    UnknownStageError,
    load_stage_config,
    parse_stage_config,
)
from tests.fixtures import load_fixture

DOCS = Path(__file__).resolve().parents[2] / "docs" / "stages.md"

MINIMAL = """
[[stages]]
name = "Todo"
kind = "queue"
statuses = ["To Do"]

[[stages]]
name = "Doing"
kind = "active"
statuses = ["In Progress"]

[[stages]]
name = "Shipped"
kind = "done"
statuses = ["Done"]
"""


@pytest.fixture(scope="module")
def config() -> StageConfig:
    return load_stage_config()


@pytest.fixture(scope="module")
def flow(config: StageConfig) -> TeamFlow:
    return config.for_team(None)


def with_overrides(extra: str) -> StageConfig:
    return parse_stage_config(MINIMAL + extra)


# -- the packaged default ----------------------------------------------------------


def test_default_stages_in_order_with_kinds(config: StageConfig) -> None:
    """The default flow is Backlog → … → Production, Production being the done stage."""
    assert config.stages == (
        Stage("Backlog", "queue", 0),
        Stage("Analysis", "queue", 1),
        Stage("Development", "active", 2),
        Stage("Testing", "active", 3),
        Stage("Deployment", "queue", 4),
        Stage("Production", "done", 5),
    )


def test_default_start_and_done(flow: TeamFlow) -> None:
    """Cycle time runs from Development to Production by default."""
    assert (flow.start_stage, flow.done_stage) == ("Development", "Production")


@pytest.mark.parametrize(
    ("status", "stage"),
    [
        ("Backlog", "Backlog"),
        ("To Do", "Backlog"),
        ("Open", "Backlog"),
        ("New", "Backlog"),
        ("Reopened", "Backlog"),
        ("Analysis", "Analysis"),
        ("Selected for Development", "Analysis"),
        ("Ready", "Analysis"),
        ("In Progress", "Development"),
        ("In Development", "Development"),
        ("In Review", "Testing"),
        ("Code Review", "Testing"),
        ("QA", "Testing"),
        ("Testing", "Testing"),
        ("Deploying", "Deployment"),
        ("Staging", "Deployment"),
        ("Ready for Release", "Deployment"),
        ("Done", "Production"),
        ("Closed", "Production"),
        ("Resolved", "Production"),
        ("Released", "Production"),
    ],
)
def test_default_status_mapping(flow: TeamFlow, status: str, stage: str) -> None:
    """Each default status name maps to its documented stage."""
    assert flow.stage_for(status, None) == stage


@pytest.mark.parametrize(
    "status", ["in progress", "  In Progress ", "IN PROGRESS", "\tin progress\n"]
)
def test_status_match_ignores_case_and_surrounding_whitespace(flow: TeamFlow, status: str) -> None:
    """Status names match case-insensitively, trimmed."""
    assert flow.stage_for(status, None) == "Development"


def test_status_name_wins_over_category(flow: TeamFlow) -> None:
    """A mapped status name is used even when its category says otherwise."""
    assert flow.stage_for("Reopened", "done") == "Backlog"


@pytest.mark.parametrize(
    ("category", "stage"),
    [
        ("new", "Backlog"),
        ("indeterminate", "Development"),
        ("done", "Production"),
        ("DONE", "Production"),
    ],
)
def test_unknown_status_falls_back_to_category(flow: TeamFlow, category: str, stage: str) -> None:
    """An unmapped status goes by its Jira status category."""
    assert flow.stage_for("Waiting for Legal", category) == stage


@pytest.mark.parametrize(
    ("status", "category"), [("Waiting", None), ("Waiting", "undefined"), (None, None)]
)
def test_unknown_status_without_known_category_is_first_stage(
    flow: TeamFlow, status: str | None, category: str | None
) -> None:
    """No mapping and no known category: the first stage."""
    assert flow.stage_for(status, category) == "Backlog"


def test_missing_status_uses_category(flow: TeamFlow) -> None:
    """A null status still maps through its category."""
    assert flow.stage_for(None, "indeterminate") == "Development"


@pytest.mark.parametrize(
    "status", ["Won't Do", "won't fix", "Cancelled", "Rejected", " Duplicate "]
)
def test_discarded_statuses_are_removed(flow: TeamFlow, status: str) -> None:
    """Discarded statuses map to Removed, even with a done category."""
    assert flow.stage_for(status, "done") == REMOVED_STAGE


def test_removed_is_neither_wip_nor_done(flow: TeamFlow) -> None:
    """Removed has index -1: not started, not done."""
    assert flow.index(REMOVED_STAGE) == -1
    assert not flow.is_started(REMOVED_STAGE)
    assert not flow.is_done(REMOVED_STAGE)


@pytest.mark.parametrize(
    ("stage", "started", "done"),
    [
        ("Backlog", False, False),
        ("Analysis", False, False),
        ("Development", True, False),
        ("Testing", True, False),
        ("Deployment", True, False),
        ("Production", True, True),
    ],
)
def test_started_and_done_are_at_or_after_their_stage(
    flow: TeamFlow, stage: str, started: bool, done: bool
) -> None:
    """is_started/is_done compare the stage index with start_stage/done_stage."""
    assert (flow.is_started(stage), flow.is_done(stage)) == (started, done)


def test_index_of_unknown_stage_raises(flow: TeamFlow) -> None:
    """An unknown stage name is an error, not a silent position."""
    with pytest.raises(UnknownStageError, match="Shipping"):
        flow.index("Shipping")


def test_index_matches_stage_names_case_insensitively(flow: TeamFlow) -> None:
    """Stage names given directly (e.g. ``to_stage``) match without regard to case."""
    assert flow.index("testing") == 3


def test_real_jira_statuses_map_to_stages(flow: TeamFlow) -> None:
    """The statuses of the recorded TES-41 and TES-4 deliveries land in the expected stages."""
    expected = {
        "cloud_TES-41_status_todo_to_inprogress.json": ("Backlog", "Development"),
        "cloud_TES-41_status_inprogress_to_done.json": ("Development", "Production"),
        "cloud_TES-41_status_done_to_todo.json": ("Production", "Backlog"),
        "server_TES-4_status_inprogress_to_resolved.json": ("Development", "Production"),
        "server_TES-4_status_resolved_to_reopened.json": ("Production", "Backlog"),
        "server_TES-4_status_reopened_to_inprogress.json": ("Backlog", "Development"),
        "server_TES-4_status_resolved_to_closed.json": ("Production", "Production"),
    }
    for name, stages in expected.items():
        body = load_fixture(f"jira/issue_updated/{name}")
        (item,) = [i for i in body["changelog"]["items"] if i["field"] == "status"]
        category = body["issue"]["fields"]["status"]["statusCategory"]["key"]
        got = (flow.stage_for(item["fromString"], None), flow.stage_for(item["toString"], category))
        assert got == stages, name


def test_project_is_its_own_team_by_default(config: StageConfig) -> None:
    """Without a [teams] entry the team is the project key."""
    assert config.team_for_project("TES") == "TES"


def test_default_file_is_what_load_reads(config: StageConfig) -> None:
    """load_stage_config() without a path reads the packaged infra/stages.default.toml."""
    path = Path(__file__).resolve().parents[2] / "infra" / "stages.default.toml"
    assert load_stage_config(path) == config


# -- teams and overrides -----------------------------------------------------------


TEAMS = """
[teams]
PAY = "Payments"
chk = "Payments"

[overrides."Payments"]
start_stage = "Todo"
done_stage = "Doing"
[overrides."Payments".statuses]
"Peer Review" = "doing"
"Parked" = "Removed"
"To Do" = "Doing"
[overrides."Payments".categories]
new = "Doing"
"""


def test_teams_map_projects_case_insensitively() -> None:
    """[teams] maps project keys (any case) to a team name."""
    config = with_overrides(TEAMS)
    assert config.team_for_project("PAY") == "Payments"
    assert config.team_for_project("CHK") == "Payments"
    assert config.team_for_project("OPS") == "OPS"


def test_team_override_changes_mapping_start_and_done() -> None:
    """A team's statuses, categories, start and done override the global ones."""
    team = with_overrides(TEAMS).for_team("payments")
    assert (team.start_stage, team.done_stage) == ("Todo", "Doing")
    assert team.stage_for("Peer Review", None) == "Doing"
    assert team.stage_for("To Do", None) == "Doing"
    assert team.stage_for("Parked", "indeterminate") == REMOVED_STAGE
    assert team.stage_for("Unheard of", "new") == "Doing"
    assert team.is_done("Doing")


def test_team_override_inherits_unchanged_global_mapping() -> None:
    """Statuses a team does not override keep their global stage."""
    team = with_overrides(TEAMS).for_team("Payments")
    assert team.stage_for("Done", None) == "Shipped"


def test_override_does_not_leak_to_other_teams() -> None:
    """Teams without overrides, and no team, get the global flow."""
    config = with_overrides(TEAMS)
    for team in (None, "OPS"):
        flow = config.for_team(team)
        assert flow is config.default
        assert flow.stage_for("Peer Review", None) == "Todo"
        assert (flow.start_stage, flow.done_stage) == ("Doing", "Shipped")


def test_stage_list_is_global() -> None:
    """Every team flow shares the one configured stage list."""
    config = with_overrides(TEAMS)
    assert config.for_team("Payments").stages == config.stages


def test_start_and_done_default_to_first_active_and_first_done_stage() -> None:
    """Omitted start_stage/done_stage: the first active stage and the first done stage."""
    flow = parse_stage_config(MINIMAL).default
    assert (flow.start_stage, flow.done_stage) == ("Doing", "Shipped")


def test_done_defaults_to_last_stage_without_done_kind() -> None:
    """With no stage of kind done, the last stage is the done stage."""
    text = MINIMAL.replace('kind = "done"', 'kind = "queue"')
    assert parse_stage_config(text).default.done_stage == "Shipped"


def test_documented_example_is_valid() -> None:
    """The example in docs/stages.md parses and behaves as the text says."""
    (example,) = re.findall(r"```toml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    config = parse_stage_config(example, source="docs/stages.md")
    payments = config.for_team(config.team_for_project("CHK"))
    assert payments.stage_for("Peer Review", None) == "Testing"
    assert payments.stage_for("Parked", None) == REMOVED_STAGE
    assert payments.start_stage == "Testing"
    assert config.for_team("OPS").stage_for("Parked", None) == "Backlog"


# -- bad configuration -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + '[categories]\nnew = "Nowhere"', "unknown stage 'Nowhere'"),
        (MINIMAL + '[overrides.X.statuses]\n"Q" = "Nowhere"', "unknown stage 'Nowhere'"),
        (MINIMAL + '[[stages]]\nname = "todo"\nkind = "queue"', "duplicate stage 'todo'"),
        ('start_stage = "Shipped"\n' + MINIMAL, "must come before done_stage"),
        ('start_stage = "Doing"\ndone_stage = "Todo"\n' + MINIMAL, "must come before done_stage"),
        ('start_stage = "Doing"\ndone_stage = "Doing"\n' + MINIMAL, "must come before done_stage"),
        ('start_stage = "Nowhere"\n' + MINIMAL, "start_stage 'Nowhere' is not a stage"),
        (MINIMAL + '[overrides.X]\ndone_stage = "Todo"', "[overrides.'X']"),
        (MINIMAL + '[[stages]]\nname = "Removed"\nkind = "queue"', "reserved"),
        (MINIMAL + '[[stages]]\nname = "Later"\nkind = "waiting"', "kind must be one of"),
        (
            MINIMAL + '[[stages]]\nname = "Later"\nkind = "queue"\nstatuses = ["done"]',
            "mapped to both",
        ),
        ('discarded = ["Done"]\n' + MINIMAL, "both discarded and mapped"),
        ('stage = "typo"\n' + MINIMAL, "unknown key(s) 'stage'"),
        (MINIMAL + '[overrides.X]\nstart = "Doing"', "unknown key(s) 'start'"),
        (MINIMAL + "[teams]\nPAY = 3", "[teams] 'PAY'"),
        (
            'start_stage = "Todo"\ndone_stage = "Shipped"\n'
            + MINIMAL.replace('"active"', '"done"'),
            "'Doing' has kind 'done' but comes before done_stage",
        ),
        ('start_stage = "Todo"\n', "at least one stage"),
        ("[[stages]]\nname = 'Only'\nkind = 'queue'", "no start_stage"),
        ('discarded = "Won\'t Do"\n' + MINIMAL, "discarded must be a list"),
        (MINIMAL + 'discarded = ["x"]', "unknown key(s) 'discarded' in [[stages]] #3"),
        ("[[stages]\n", "not valid TOML"),
    ],
)
def test_bad_config_is_rejected_with_a_clear_message(text: str, message: str) -> None:
    """Each kind of bad configuration raises StageConfigError naming the offending entry."""
    with pytest.raises(StageConfigError) as info:
        parse_stage_config(text, source="team.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("team.toml: ")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A stages file that cannot be read is reported with its path."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(StageConfigError, match=re.escape(str(missing))):
        load_stage_config(missing)


def test_load_reads_the_given_file(tmp_path: Path) -> None:
    """load_stage_config(path) reads that file."""
    path = tmp_path / "stages.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    assert [s.name for s in load_stage_config(path).stages] == ["Todo", "Doing", "Shipped"]
