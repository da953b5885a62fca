"""The text the CLI prints, from records alone: a fleet's tables, history lines, rollback choices."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core import fleet_report
from reconciler.core.fleet import AppOnHost, HostAnswer, HostPush, Pushed, Running, Unanswered
from reconciler.core.report import choices_lines, history_line, retried_line, swapped_back_warning, written_line


def test_a_fleet_status_is_a_table_with_drift_marked_and_a_count_of_converged_hosts() -> None:
    hosts: list[HostAnswer[tuple[AppOnHost, ...]]] = [
        HostAnswer("a", "ssh://a", (AppOnHost("web", "v2", Running("web", "v2", "abcd1234", "", "running")),)),
        HostAnswer("b", "ssh://b", (AppOnHost("web", "v2", Running("web", "v1", "0123abcd", "", "running")),)),
        HostAnswer("c", "ssh://c", None, "did not answer within 10s"),
    ]
    lines = fleet_report.status_lines("feedbeef", "desired-state.yaml", hosts)
    assert lines[0].split() == ["HOST", "APP", "VERSION", "DESIRED", "COMMIT", "STATE"]
    assert lines[1].split() == ["a", "web", "v2", "v2", "abcd1234", "running"]
    assert lines[2].split() == ["b", "web", "v1", "v2", "0123abcd", "running,", "DRIFT"]
    assert lines[3].endswith("not read: did not answer within 10s")
    assert lines[-1] == "1 of 3 hosts run what desired-state.yaml @ feedbeef asks for"
    assert fleet_report.status_json("f" * 40, "desired-state.yaml", hosts)["converged"] == 1


def test_a_push_says_where_each_host_was_left_and_what_it_runs() -> None:
    hosts = [
        HostPush("a", "ssh://a", 1, Pushed.CONVERGED),
        HostPush("b", "ssh://b", 2, Pushed.NOT_STARTED, error="group 1 failed"),
    ]
    runs: dict[str, tuple[Running, ...] | Unanswered] = {
        "a": (Running("web", "v2", "abcd1234", "", "running"), Running("job", "v1", "abcd1234", "", "exited")),
        "b": Unanswered("engine down"),
    }
    lines = fleet_report.push_lines("f" * 40, "ffffffff", "desired-state.yaml", "a,b", hosts, runs)
    assert lines == [
        "desired-state.yaml @ ffffffff: rollout a,b",
        "== a (group 1, ssh://a): converged",
        "  runs: web v2, job v1 (exited)",
        "== b (group 2, ssh://b): not started: group 1 failed",
        "  runs: unknown (engine down)",
        "fleet: 1 converged, 1 not started",
    ]


@dataclass(frozen=True)
class Row:
    started_at: float = 0.0
    finished_at: float | None = 2.5
    revision: str = "abcdef1234567890"
    author: str = "ci"
    app: str = "web"
    action: str = "replace"
    from_version: str = "v1"
    to_version: str = "v2"
    result: str = "succeeded"
    message: str = ""


def test_a_history_line_names_commit_app_change_result_duration_and_author() -> None:
    line = history_line(Row())
    assert line.split()[2:] == ["abcdef12", "web", "replace", "v1", "->", "v2", "succeeded", "2.5s", "by", "ci"]
    assert history_line(Row(action="cleanup", finished_at=None, author="", message="gone")).split()[2:] == [
        "abcdef12",
        "web",
        "cleanup",
        "succeeded",
        "gone",
    ]


@dataclass(frozen=True)
class Seen:
    version: str
    revision: str
    when: float
    author: str


def test_rollback_choices_and_a_commit_line() -> None:
    lines = choices_lines("web", "d.yaml", "feedbeef", current="v3", previous="v2", stable="(none: never promoted)",
                          seen=[Seen("v3", "c" * 40, 0.0, "ann")])  # fmt: skip
    assert lines == [
        "web: d.yaml asks for v3 @ feedbeef",
        "  --to previous  v2",
        "  --to stable    (none: never promoted)",
        "  versions in git history, newest first:",
        "    v3               cccccccc  1970-01-01 00:00Z  ann",
    ]
    assert written_line("a" * 40, "main", "", False, "rollback web v3 -> v2") == (
        "committed aaaaaaaa on main: rollback web v3 -> v2; not pushed (--push to push it)"
    )


def test_a_retry_says_who_tries_the_release_again() -> None:
    assert retried_line("web", 4242) == "web: failed release forgotten; agent (pid 4242) asked for a pass now"
    assert retried_line("web", None) == "web: failed release forgotten; the next reconcile or agent pass tries it again"


def test_a_local_swap_back_says_how_to_make_git_match() -> None:
    warning = swapped_back_warning("web", "1.2")
    assert warning.startswith("!! the agent is suspended and the host differs from git.")
    assert "`reconcile rollback web --to 1.2 --push`" in warning
    assert warning.endswith("then `reconcile resume`.")
