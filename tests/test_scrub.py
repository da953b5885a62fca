"""The scrubber on many remembered values and a large text: every occurrence is masked, nothing else.

Correctness only (the time it takes is in bench/fuzz.py --scrub): a text of ~300 KB made of filler that
holds no secret, with remembered values and ``KEY=VALUE`` pairs planted in it, must come back as the
filler with ``***`` exactly where the values were.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from reconciler.telemetry import scrub


@pytest.fixture(autouse=True)
def _forgotten() -> Iterator[None]:
    """The remembered values are process-wide: start and leave this process's memory empty."""
    scrub.forget()
    yield
    scrub.forget()


def test_many_remembered_values_and_keys_are_masked_wherever_they_are_in_a_large_text() -> None:
    rng = random.Random(18)
    # Values from an alphabet the filler does not use; some share long prefixes, some are substrings of
    # others, some are longer than the automaton's depth.
    values = {"".join(rng.choice("ABCDEFGH0123") for _ in range(rng.randint(4, 40))) for _ in range(1500)}
    values |= {"SHARED-PREFIX-" + "A" * 80 + str(n) for n in range(20)}  # long, the same first 64 characters
    values |= {"ABCD", "XABCDX", "B" * 5000}
    keys = [f"KEY_{n}" for n in range(300)]
    scrub.remember(values, keys=keys)
    planted = sorted(values)
    pieces: list[str] = []
    expected: list[str] = []
    while sum(map(len, pieces)) < 300_000:
        filler = "".join(rng.choice("abcdefgh xyz,.") for _ in range(rng.randint(1, 30)))
        pieces.append(filler)
        expected.append(filler)
        if rng.random() < 0.2:
            key = rng.choice(keys)
            pieces.append(f" {key}=" + "".join(rng.choice("abcdefgh") for _ in range(rng.randint(0, 12))) + " ")
            expected.append(f" {key}=*** ")
        else:
            pieces.append(rng.choice(planted))
            expected.append("***")
    # Two values that touch are two masks; one inside another or overlapping it is one mask.
    pieces += [" ", "ABCDABCD", " XABCDX ", "ZZ" + "B" * 5000 + "ZZ"]
    expected += [" ", "******", " *** ", "ZZ***ZZ"]

    assert scrub.scrub("".join(pieces)) == "".join(expected)


def test_a_long_value_is_masked_only_where_it_is_whole() -> None:
    long = "Q" * 64 + "-the-rest-of-a-long-secret"
    scrub.remember([long])

    assert scrub.scrub(f"[{long}] [{long[:-1]}]") == f"[***] [{long[:-1]}]"


def test_a_long_run_of_letters_is_not_taken_for_a_url_password() -> None:
    url = "http://127.0.0.1:8000/" + "a" * 300_000

    assert scrub.scrub(url) == url
    assert scrub.scrub("x" * 1000 + "https://user:pa55@host/") == "x" * 1000 + "https://user:***@host/"
