"""No env value, env_file content or URL password reaches any output or the journal (issue 7, 5.4).

End to end through the real command line and engine where a secret can travel (a probe's detail in a
failed deploy, an env_file that is not a file of KEY=VALUE lines), and the scrubber itself on the
texts that carried secrets before: an engine's error echoing a container's environment.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.telemetry import scrub
from tests.support import AppNames, ImageFactory, free_port
from tests.support.state import Site, app_yaml, body, cli, desired, output, show

PASSWORD = "hunter2-the-probe-password"
CANARY = "canary-value-of-reconciles-own-environment"


def everything_written(site: Site, result_text: str) -> str:
    """What a user can read after the run: its output, history, status, and the journal's bytes."""
    history = cli("history", "--state-dir", site.state, "-o", "json")
    status = cli("status", "--repo", site.repo, "--state-dir", site.state, "-o", "json")
    journal = (site.state / "journal.db").read_bytes().decode(errors="replace")
    return "\n".join([result_text, output(history), output(status), journal])


def test_a_password_in_a_health_url_is_never_printed_nor_journaled(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "broken", healthy=False)
    app, port = app_names("web"), free_port()
    good = app_yaml(app, site.web(), "v1", port)
    site.commit(desired(good))
    site.converge()
    url = f"http://probe:{PASSWORD}@127.0.0.1:{port}/health"
    broken = app_yaml(app, site.web(), "broken", port, timeout="2s").replace(f"http://127.0.0.1:{port}/health", url)
    site.commit(desired(broken))

    result = site.reconcile()

    assert result.returncode == 1, show(result)
    assert "rolled back to v1" in result.stdout, show(result)
    assert f"http://probe:***@127.0.0.1:{port}/health" in result.stdout, show(result)
    assert PASSWORD not in everything_written(site, output(result))
    assert body(port) == "v1"


def test_an_env_file_that_is_not_a_file_of_key_value_lines_is_refused_without_its_contents(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    site.commit(desired(app_yaml(app, site.web(), "v1", port) + "    env_file: /proc/self/environ\n"))

    result = site.reconcile(env={"CANARY_SECRET": CANARY})

    assert result.returncode == 1, show(result)
    assert "env_file /proc/self/environ: cannot read it (not a regular file)" in output(result), show(result)
    assert CANARY not in everything_written(site, output(result))


def test_an_env_file_with_a_nul_or_over_the_size_cap_is_one_located_line(
    site: Site, images: ImageFactory, app_names: AppNames, tmp_path: Path
) -> None:
    images.build("web", "v1")
    app = app_names("web")
    nul = tmp_path / "nul.env"
    nul.write_bytes(b"A=1\nPW=s3cret-with\0nul\n")
    big = tmp_path / "big.env"
    big.write_text("X=" + "y" * 300_000 + "\n")
    for path, said in ((nul, f"env_file {nul}:2: holds a NUL character"), (big, "larger than 256 KiB")):
        site.commit(desired(app_yaml(app, site.web(), "v1", free_port()) + f"    env_file: {path}\n"))
        result = site.reconcile()
        assert result.returncode == 1, show(result)
        assert said in output(result), show(result)
        assert "s3cret" not in output(result) and "yyyy" not in output(result)


def test_the_scrubber_masks_remembered_values_keys_and_url_passwords() -> None:
    scrub.remember_env({"DB_PASSWORD": "pa55-word-xyz", "SHORT": "ab"})
    runc = "OCI runtime create failed: invalid env DB_PASSWORD=pa55-word-xyz SHORT=ab: unknown"
    # Masked up to the next space: a value may hold a colon (a URL), so the colon goes too.
    assert scrub.scrub(runc) == "OCI runtime create failed: invalid env DB_PASSWORD=*** SHORT=*** unknown"
    assert scrub.scrub("value pa55-word-xyz quoted alone") == "value *** quoted alone"
    assert (
        scrub.scrub("GET https://u:p4ss@example.invalid/health: 503") == "GET https://u:***@example.invalid/health: 503"
    )
    assert (
        scrub.scrub("a short ab stays: it cannot be told from the text")
        == "a short ab stays: it cannot be told from the text"
    )
