"""The reliability report: scenario tests record what they measured; ``make soak`` writes the table.

A test takes the ``reliability`` fixture and calls ``reliability.record(scenario, client=…, usage=…,
measured=…)``. With ``--reliability-report=docs/reliability.md`` (``make soak`` passes it) the rows
measured in this run replace the same scenarios' rows in that file's table; rows not measured this
run are kept, marked with the date they were last measured. Without the option nothing is written.
"""

from __future__ import annotations

import datetime
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

BEGIN = "<!-- reliability:begin -->"
END = "<!-- reliability:end -->"
HEADER = ("| scenario | what the client saw | usage in the budget tables | measured | run |\n"
          "|---|---|---|---|---|")


@dataclass(frozen=True)
class Row:
    scenario: str
    client: str
    usage: str
    measured: str
    run: str

    def line(self) -> str:
        cells = (self.scenario, self.client, self.usage, self.measured, self.run)
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


class Reliability:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")

    def record(self, scenario: str, *, client: str, usage: str, measured: str) -> None:
        self.rows[scenario] = Row(scenario, client, usage, measured, self.stamp)
        print(f"[reliability] {scenario}: {client} | {usage} | {measured}")


_STATE = pytest.StashKey[Reliability]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--reliability-report", default=None, metavar="FILE",
                     help="write the measured reliability scenarios into the table in FILE")
    parser.addoption("--soak-seconds", default=None, type=float,
                     help="duration of the soak load test (default: env SOAK_SECONDS, else 600)")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STATE] = Reliability()


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Reliability:
    return request.config.stash[_STATE]


def _parse(text: str) -> tuple[str, dict[str, Row], str]:
    if BEGIN not in text or END not in text:
        return text.rstrip() + "\n\n", {}, "\n"
    head, rest = text.split(BEGIN, 1)
    body, tail = rest.split(END, 1)
    rows: dict[str, Row] = {}
    for line in body.splitlines():
        if not line.startswith("| ") or line.startswith("| scenario |"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 5:
            rows[cells[0]] = Row(*cells)
    return head, rows, tail


def write_report(path: Path, measured: dict[str, Row]) -> None:
    text = path.read_text() if path.exists() else "# Reliability\n"
    head, rows, tail = _parse(text)
    rows.update(measured)
    table = "\n".join([HEADER, *(r.line() for r in rows.values())])
    host = f"{platform.node() or 'host'}, {platform.machine()}, Python {platform.python_version()}"
    path.write_text(f"{head}{BEGIN}\n{table}\n\nLast written by `make soak` on {host}.\n{END}{tail}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = session.config.getoption("--reliability-report")
    state = session.config.stash.get(_STATE, None)
    if out and state is not None and state.rows:
        write_report(Path(out), state.rows)
