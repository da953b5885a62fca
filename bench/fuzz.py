"""Fuzzing of the desired-state reader and validator (issue 7): mutated files through ``validate``'s path.

Every file goes through ``parse_desired`` (``parse_yaml``, the file's env values remembered by the
scrubber, ``load_desired``, the messages scrubbed), in this process, as ``reconcile validate`` does; the
scrubber forgets each file's values before the next one, as a new process would. An outcome is *ok*
(a ``DesiredState``), *invalid* (``InvalidDesiredState`` whose every line is ``FILE:LINE:COL: ...``),
*unlocated* (an ``InvalidDesiredState`` line without its place), *long* (a message line over
``MAX_LINE`` characters: a value was quoted whole), *leaked* (a message that shows the env value
planted in every seed) or an *internal error* (any other exception, counted by type). A file that
takes more than 5 s counts as a hang; at 60 s it is interrupted.

The mutations are those of tests/test_fuzz.py: bytes inserted, deleted and replaced (YAML indicators,
tabs, NULs, bytes that are not UTF-8), lines duplicated, dropped, swapped and re-indented, tags,
anchors and aliases (also alias bombs), deep nesting, odd keys and huge numbers, and (issue 18)
double-quoted unicode escapes (``"\\UFFFFFFFF"``, surrogates), ``%YAML``/``%TAG`` directives (other
versions, twice, a second document) and values, keys and URLs of 100 to 300 KB, several per file.
Issue 20: a seed holds a stack with every key it adds (networks, depends_on, release, secrets and every
container option), and the odd keys and values include the stack's (modes, ulimits, aliases, devices...).

Run: ``.venv/bin/python bench/fuzz.py [-n 10000] [--seed 7] [--show 5]``. Exit 0 when there is no
internal error, no unlocated, long or leaking message and no hang.

``--big``: files just under the default size cap (512 KiB) holding one value of 512 KB of each kind that
was quadratic (an env value, a health URL, its password, a duration, an image, a key), the densest files
(env values of 1 to 1,024 characters, plain and quoted, filling the cap: the parser's worst cases, some
refused at ``MAX_NODES``), and flow-style apps whose values are quoted in messages, each through
``reconcile validate`` in a new process; the target is 1 s each (issue 18).
``--scrub``: the scrubber alone on 300 KB texts with 1,000 remembered values.
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler.adapters.yamlfile import DEFAULT_MAX_FILE_BYTES  # noqa: E402
from reconciler.converge.run import parse_desired  # noqa: E402
from reconciler.errors import InvalidDesiredState  # noqa: E402
from reconciler.telemetry import scrub  # noqa: E402

SECRET = "Zq7-secret-Vx9"  # planted as an env value in every seed; must never be printed
LOCATED = re.compile(r"^[^:\n]+:\d+:\d+: ")
HANG_SECONDS = 5.0
MAX_LINE = 1000  # characters: messages quote at most ~80 characters of a value
INTERRUPT_SECONDS = 60

SEEDS = [
    f"""\
# yaml-language-server: $schema=schemas/desired-state.schema.json
apps:
  web:                                   # also the container name
    image: registry.example.com:5000/team/web
    version: v1.2.3
    ports: ["8000:8000", "127.0.0.1:8443:443", "53:53/udp"]
    env:
      LOG_LEVEL: info
      PW: {SECRET}
      PORT: 8000
    env_file: /etc/web/app.env
    volumes: ["web-data:/data", "/srv/web:/srv:ro"]
    command: ["/bin/server", "--port", "8000"]
    restart: always
    init: true
    stop_timeout: 500ms
    health:
      http: http://127.0.0.1:8000/health
      interval: 500ms
      timeout: 30s
      healthy_for: 10m
    stable_after: 1h
  worker:
    image: team/worker
    version: stable
    health: {{exec: [/bin/check, --quick]}}
""",
    f"""\
apps:
  web:
    image: example/web
    version: &v 'v1.0.0'
    env: &common {{LOG_LEVEL: info, PW: "{SECRET}"}}
  api:
    image: example/api
    version: *v
    env: *common
  worker: {{image: example/worker, version: v3, init: true, env: {{PW: {SECRET}}}}}
  cron:
    <<: &base {{image: example/cron, restart: "no"}}
    version: v4
    env:
      PW: {SECRET}
""",
    f"""\
%YAML 1.1
---
apps:
  demo:
    image: reconciler-demo/web
    version: v1
    ports: ["127.0.0.1:8080:8000"]
    env: {{GREETING: hello, PW: {SECRET}, DEBUG: yes}}
    health:
      tcp: 127.0.0.1:8080
      interval: 1s
""",
    # Issue 20: a stack with every key it adds (the corpus's own file, the planted secret in place of its
    # "hunter2"), so that the mutations reach the stack's validators.
    (ROOT / "tests" / "fuzz_corpus" / "stack-every-key.yaml").read_text().replace("hunter2", SECRET),
]

INDICATORS = [*":-?[]{},&*!|>'\"%@`#\t\n ", "\x00", "\\", "\r", "\u2028", "\ufeff", "~", "<<", ": ", "- "]
TAGS = [
    "!!int", "!!float", "!!bool", "!!null", "!!str", "!!set", "!!omap", "!!pairs", "!!binary", "!!timestamp",
    "!!map", "!!seq", "!", "!vault", "!!python/object/apply:os.system", "!<tag:yaml.org,2002:int>", "!!merge",
]  # fmt: skip
WEIRD_KEYS = [
    "? [a, [b]]\n:", "? {a: 1}\n:", '"a\\nb":', "<<:", "~:", "null:", "1.5:", "true:", "!!int 1:", "'':",
    '"\\0":', "*k:", "? |\n  x\n:", "0x1F:", "version:", "apps:", "-1:",
    "networks:", "depends_on:", "release:", "secrets:", "default:", "privileged:", "cap_add:", "ulimits:",
]  # fmt: skip
NUMBERS = [
    "9" * 400 + "h", "1000000000h", ".inf", "-.inf", ".nan", "1e999", "9" * 5000, "0x" + "f" * 80, "1:30:00",
    "300.1.1.1:80:80", "0s", "-1s", "1e5", "0o777", "0b_", "99999", "721h", "25h", "1_000s",
    # issue 20: values the stack's keys hold or refuse
    "0400", "'0999'", "-1", "0", "2147483648", "9223372036854775808", "64q", "1e999m", "0.0", "[ALL]", "[web, web]",
    "{soft: 2, hard: 1}", "{web: healthy}", "{db: started, web: completed}", "[db]", "{x: {aliases: [a]}}",
    "host", "none", "bridge", "/dev/../..", "/dev/x:/dev/y:rwmx", "SIGKILL", "seccomp=unconfined", "{}", "[]",
    "{internal: yes}", "{command: []}", "[{source: x, target: ../y}]", "{nofile: 1e99}", "{a.b: 1}",
]  # fmt: skip
ESCAPES = [
    "\\UFFFFFFFF", "\\U00110000", "\\U0010FFFF", "\\uD800", "\\uDFFF", "\\x00", "\\0", "\\e", "\\N", "\\_",
    "\\L", "\\P", "\\U0001F600", "\\u00e9", "\\x7f", "\\u202e", "\\uFEFF", "\\q", "\\U1234", "\\x",
]  # fmt: skip
DIRECTIVES = [
    "%YAML 1.1", "%YAML 1.2", "%YAML 9.9", "%YAML 1.9", "%YAML 2.0", "%YAML 1.0", "%YAML 1.", "%YAML 1.1 # c",
    "%YAML 1." + "9" * 5000, "%TAG ! tag:example.com,2000:", "%TAG !e! tag:e,2000:app/", "%FOO bar", "%",
]  # fmt: skip


def _huge(rng: random.Random) -> str:
    """A value of 100 to 300 KB: a run of one character, a URL, text that looks like many secrets."""
    size = rng.choice([100_000, 150_000, 300_000])
    return rng.choice(
        [
            "a" * size,
            "http://127.0.0.1:8000/" + "a" * size,
            "http://u:" + "p" * size + "@127.0.0.1:8000/health",
            '"' + "\\u00e9" * (size // 6) + '"',
            ("Zq7-secret " * (size // 11)).strip(),
            "x:" * (size // 2),
            "sha256:" + "0" * size,
            "/" + "d/" * (size // 2),
        ]
    )


def _put(line: str, pattern: str, new: str) -> str:
    """``line`` with the first match of ``pattern`` replaced by ``new`` taken as it is (no escapes)."""
    found = re.search(pattern, line)
    return line if found is None else line[: found.start()] + new + line[found.end() :]


def _secret_spans(text: str) -> list[tuple[int, int]]:
    """The lines that hold the planted value: a byte mutation there could make it a key, which is shown.
    (Found with ``str.find``: a ``[^\\n]*SECRET`` pattern is quadratic on a line of 300 KB.)"""
    spans = []
    at = text.find(SECRET)
    while at >= 0:
        start, end = text.rfind("\n", 0, at) + 1, text.find("\n", at)
        spans.append((start, len(text) if end < 0 else end))
        at = text.find(SECRET, at + len(SECRET))
    return spans


def _inside(spans: list[tuple[int, int]], position: int) -> bool:
    return any(start <= position <= end for start, end in spans)


def _tagged(line: str, tag: str) -> str:
    """``line`` with ``tag`` before its value (or its key, when it has no value)."""
    match = re.search(r":\s", line)
    at = match.end() if match else len(line) - len(line.lstrip())
    return line[:at] + tag + " " + line[at:]


def _bomb(rng: random.Random) -> str:
    width, levels = rng.randint(2, 10), rng.randint(3, 12)
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _deep(rng: random.Random) -> str:
    depth = rng.choice([10, 63, 64, 65, 100, 250, 1000, 5000])
    return rng.choice(
        [
            "[" * depth + "]" * depth,
            "{a: " * depth + "x" + "}" * depth,
            "- " * depth + "x",
            "[" * depth,
            "".join(" " * i + f"k{i}:\n" for i in range(min(depth, 300))),
        ]
    )


def mutate(text: str, rng: random.Random) -> str:
    """One to six mutations of ``text``; the planted secret values are never cut by a byte mutation."""
    for _ in range(rng.randint(1, 6)):
        lines = text.split("\n")
        line = rng.randrange(len(lines))
        operation = rng.randrange(15)
        spans = _secret_spans(text)
        position = rng.randrange(len(text) + 1)
        if operation in (0, 1, 2) and _inside(spans, position):
            continue
        if operation == 0:  # insert indicators or random characters
            chunk = rng.choice(INDICATORS) if rng.random() < 0.7 else chr(rng.randrange(1, 0x3000))
            text = text[:position] + chunk * rng.choice([1, 1, 2, 3, 50]) + text[position:]
        elif operation == 1:  # delete a run
            end = min(len(text), position + rng.randint(1, 12))
            if not _inside(spans, end):
                text = text[:position] + text[end:]
        elif operation == 2:  # replace one character
            text = text[:position] + rng.choice(INDICATORS) + text[position + 1 :]
        elif operation == 3:  # duplicate, drop or swap lines
            other = rng.randrange(len(lines))
            choice = rng.randrange(3)
            if choice == 0:
                lines.insert(line, lines[line])
            elif choice == 1 and len(lines) > 1:
                del lines[line]
            else:
                lines[line], lines[other] = lines[other], lines[line]
            text = "\n".join(lines)
        elif operation == 4:  # re-indent a line
            delta = rng.choice([-4, -2, -1, 1, 2, 4])
            lines[line] = " " * delta + lines[line] if delta > 0 else lines[line][-delta:]
            text = "\n".join(lines)
        elif operation == 5:  # a tag on a value or a key
            lines[line] = _tagged(lines[line], rng.choice(TAGS))
            text = "\n".join(lines)
        elif operation == 6:  # an anchor on one value, its alias as another
            name = rng.choice(["a", "v", "common", "x"])
            first, second = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[first] = lines[first].replace(": ", f": &{name} ", 1)
            lines[second] = re.sub(r": .*$", f": *{name}", lines[second], count=1)
            text = "\n".join(lines)
        elif operation == 7:  # an alias bomb, at the top or as a value
            text = _bomb(rng) + text if rng.random() < 0.5 else text.replace("apps:", _bomb(rng) + "apps:", 1)
        elif operation == 8:  # deep nesting in place of a value
            lines[line] = re.sub(r": .*$", ": " + _deep(rng).replace("\n", "\n" + " " * 4), lines[line], count=1)
            text = "\n".join(lines)
        elif operation == 9:  # an odd key in place of a key
            indent = len(lines[line]) - len(lines[line].lstrip())
            lines[line] = re.sub(r"^\s*[^:\s]+:", " " * indent + rng.choice(WEIRD_KEYS), lines[line], count=1)
            text = "\n".join(lines)
        elif operation == 10:  # a huge or odd number in place of a value
            lines[line] = re.sub(r": [^#\n]*", f": {rng.choice(NUMBERS)}", lines[line], count=1)
            text = "\n".join(lines)
        elif operation == 11:  # repeat a line many times (long files, duplicate keys)
            lines[line : line + 1] = [lines[line]] * rng.choice([2, 10, 1000])
            text = "\n".join(lines)
        elif operation == 12:  # a double-quoted value with unicode escapes
            escapes = "".join(rng.choice(ESCAPES) for _ in range(rng.randint(1, 3)))
            lines[line] = _put(lines[line], r": [^#\n]*", f': "v{escapes}1"')
            text = "\n".join(lines)
        elif operation == 13:  # directives: at the top, twice, or before a second document
            directive = rng.choice(DIRECTIVES)
            where = rng.randrange(3)
            if where == 0:
                text = directive + "\n---\n" + text
            elif where == 1:
                text = directive + "\n" + rng.choice(DIRECTIVES) + "\n---\n" + text
            else:
                text = text + "\n...\n" + directive + "\n---\napps: {}\n"
        else:  # a value, a key or a URL of 100 to 300 KB
            big = _huge(rng)
            if rng.random() < 0.2:
                indent = len(lines[line]) - len(lines[line].lstrip())
                lines[line] = _put(lines[line], r"^\s*[^:\s]+:", " " * indent + big + ":")
            else:
                lines[line] = _put(lines[line], r": [^#\n]*", ": " + big)
            text = "\n".join(lines)
    return text


def check(data: bytes, filename: str = "fuzz.yaml") -> tuple[str, str]:
    """(outcome, detail): ok, invalid, unlocated, long, leaked or internal (detail: the exception's type)."""
    scrub.forget()
    try:
        parse_desired(data, filename, "")
    except InvalidDesiredState as exc:
        lines = str(exc).split("\n")
        if SECRET in str(exc):
            return "leaked", ""
        if not all(LOCATED.match(line) for line in lines):
            return "unlocated", next(line for line in lines if not LOCATED.match(line))
        if any(len(line) > MAX_LINE for line in lines):
            return "long", next(line for line in lines if len(line) > MAX_LINE)[:300]
        return "invalid", ""
    except Exception as exc:  # what the fuzzing is for: any other exception is a bug
        return "internal", f"{type(exc).__name__}: {traceback.format_exc(limit=-3)}"
    return "ok", ""


class _Interrupted(BaseException):
    pass


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted


CAP = DEFAULT_MAX_FILE_BYTES  # RECONCILE_MAX_FILE_BYTES unset
BIG_TARGET_SECONDS = 1.0


def _under_cap(head: str, filler: Callable[[int], str], tail: str = "") -> str:
    """``head + filler(n) + tail`` with the largest ``n`` that keeps the file under the size cap."""
    room = CAP - 64 - len((head + tail).encode())
    return head + filler(room) + tail


def big_files() -> dict[str, str]:
    """Files just under the size cap, each with what made validation quadratic (issue 18) or what is the
    most work for the parser: the pure-Python reader costs ~30 us a node and ~0.5 us a character."""
    app = "apps:\n  web:\n    image: example/web\n    version: v1\n"
    files = {
        "env value under the cap": _under_cap(app + "    env:\n      BIG: ", lambda n: "v" * n, "\n"),
        "health URL under the cap": _under_cap(
            app + "    health:\n      http: http://127.0.0.1:8000/", lambda n: "a" * n
        ),
        "URL password under the cap": _under_cap(
            app + "    health:\n      http: http://u:", lambda n: "p" * n, "@127.0.0.1:8000/\n"
        ),
        "duration under the cap": _under_cap(app + "    stop_timeout: ", lambda n: "9" * n, "\n"),
        "image under the cap": _under_cap("apps:\n  web:\n    version: v1\n    image: ", lambda n: "a" * n, "\n"),
        "key under the cap": _under_cap(app + "    ? ", lambda n: "k" * n, "\n    : 1\n"),
        # Every value is quoted in a message, and the file is refused at its MAX_NODES + 1st node.
        "flow apps, quoted values": _under_cap(
            "apps:\n",
            lambda n: "".join(
                f"  a{i}: {{image: example/web, version: v1, env: {{PW: pw-{i:05d}-long}},"
                f" stop_timeout: pw-{i:05d}-long}}\n"
                for i in range(n // 100)
            ),
        ),
    }
    for size in (1, 8, 16, 32, 48, 64, 128, 1024):
        for quote in ("", '"'):

            def values(room: int, size: int = size, quote: str = quote) -> str:
                line = "      K{:05d}: " + quote + "v" * size + quote + "\n"
                return "".join(line.format(i) for i in range(room // len(line.format(0))))

            files[f"env values of {size}{' quoted' if quote else ''}"] = _under_cap(app + "    env:\n", values)
    return files


def run_big() -> int:
    """Each of ``big_files`` through ``reconcile validate`` (a new process, as a user runs it): the time,
    the exit code and the longest line printed. Exit 1 when one takes over BIG_TARGET_SECONDS."""
    over = 0
    with tempfile.TemporaryDirectory() as folder:
        for name, text in big_files().items():
            path = Path(folder) / "desired-state.yaml"
            path.write_text(text)
            begin = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-m", "reconciler", "validate", str(path)], capture_output=True, text=True, check=False
            )
            took = time.perf_counter() - begin
            longest = max(map(len, (result.stdout + result.stderr).splitlines()), default=0)
            first = (result.stderr or result.stdout).splitlines()[0][:110] if (result.stderr or result.stdout) else ""
            over += took > BIG_TARGET_SECONDS
            print(
                f"{name:32} {len(text.encode()):>8} B  {took:5.2f}s  exit {result.returncode}  longest line {longest}"
            )
            print(f"{'':32} {first.replace(folder + '/', '')}")
    print(f"over {BIG_TARGET_SECONDS:.0f}s: {over}")
    return 1 if over else 0


def run_scrub() -> int:
    """``scrub`` on a 300 KB text with 1,000 remembered values and 1,000 remembered keys."""
    rng = random.Random(18)
    scrub.forget()
    values = ["".join(rng.choice("abcdefgh0123") for _ in range(rng.randint(4, 40))) for _ in range(1000)]
    scrub.remember(values, keys=[f"K{i}" for i in range(1000)])
    scrub.remember(["v" * 150_000])
    for name, text in {
        "300 KB of random text": "".join(rng.choice("abcdefgh0123 =K") for _ in range(300_000)),
        "300 KB of one letter": "v" * 300_000,
        "a URL of 300 KB": "http://127.0.0.1:8000/" + "a" * 300_000,
    }.items():
        begin = time.perf_counter()
        scrub.scrub(text)
        print(f"scrub, {name}: {time.perf_counter() - begin:.3f}s")
    scrub.forget()
    return 0


def main() -> int:
    if "--big" in sys.argv[1:]:
        return run_big()
    if "--scrub" in sys.argv[1:]:
        return run_scrub()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=10_000, help="how many mutated files (default 10000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--show", type=int, default=3, help="show this many examples of each problem")
    parser.add_argument("--save", type=Path, help="write the files with problems to this directory")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    outcomes: collections.Counter[str] = collections.Counter()
    internal: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)
    slowest, slowest_size, hangs = 0.0, 0, 0
    signal.signal(signal.SIGALRM, _interrupt)
    started = time.perf_counter()
    for index in range(args.n):
        text = mutate(rng.choice(SEEDS), rng)
        data = text.encode("utf-8", "surrogatepass")
        if rng.random() < 0.05:  # bytes that are not UTF-8
            at = rng.randrange(len(data) + 1)
            data = data[:at] + bytes([rng.choice([0xFF, 0xC3, 0x80, 0xFE])]) + data[at:]
        begin = time.perf_counter()
        signal.alarm(INTERRUPT_SECONDS)
        try:
            outcome, detail = check(data)
        except _Interrupted:
            outcome, detail = "interrupted", ""
        finally:
            signal.alarm(0)
        took = time.perf_counter() - begin
        if took > slowest:
            slowest, slowest_size = took, len(data)
        hangs += took > HANG_SECONDS
        outcomes[outcome] += 1
        if outcome == "internal":
            internal[detail.split(":", 1)[0]] += 1
        if outcome not in ("ok", "invalid") or took > HANG_SECONDS:
            if len(examples[outcome]) < args.show:
                examples[outcome].append(f"#{index} ({took:.2f}s) {detail}\n{text[:400]!r}")
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                (args.save / f"{outcome}-{index}.yaml").write_bytes(data)
    total = time.perf_counter() - started
    print(f"files: {args.n} (seed {args.seed}) in {total:.1f}s")
    print(f"ok: {outcomes['ok']}")
    print(f"invalid (located): {outcomes['invalid']}")
    print(f"internal errors: {outcomes['internal']}" + "".join(f"\n  {k}: {v}" for k, v in internal.most_common()))
    print(f"unlocated messages: {outcomes['unlocated']}")
    print(f"messages with a line over {MAX_LINE} characters: {outcomes['long']}")
    print(f"messages showing the planted env value: {outcomes['leaked']}")
    print(f"slowest file: {slowest:.3f}s ({slowest_size} bytes)")
    print(f"files over {HANG_SECONDS:.0f}s: {hangs} (interrupted at {INTERRUPT_SECONDS}s: {outcomes['interrupted']})")
    for outcome, shown in examples.items():
        for example in shown:
            print(f"\n[{outcome}] {example}")
    bad = outcomes["internal"] + outcomes["unlocated"] + outcomes["long"] + outcomes["leaked"] + outcomes["interrupted"]
    bad += hangs
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
