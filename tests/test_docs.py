"""The README's and the docs' examples run as printed; the generated pages cover the schema and every CSV.

Every ```bash and ```python block of README.md and docs/**/*.md runs (bash with `set -e`,
`.venv/bin/pibench` meaning this checkout's pibench), in a scratch folder that sees the
repository's configs/. A block preceded by `<!-- skip: reason -->` is skipped for that reason
(expensive: training, real MPC parties, several machines). A ```yaml block that is a
sweep config (it has `run:`) is checked by the sweep's config check.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"(?:<!-- (skip: [^\n]*?|measure example) -->\n)?```(\w+)\n(.*?)```", re.S)
RUN_BY_OTHER_TESTS = "runs real MPC parties; tests/test_export_mpc.py runs this example"


def examples() -> list:
    found = []
    for page in PAGES:
        for i, match in enumerate(BLOCK.finditer(page.read_text())):
            marker, lang, code = match.groups()
            if lang not in ("bash", "python", "yaml"):
                continue
            skip = RUN_BY_OTHER_TESTS if marker == "measure example" else (marker or "")[len("skip: "):] or None
            name = f"{page.relative_to(ROOT)}[{i}]"
            runs = [pytest.mark.integration] if lang in ("bash", "python") else []  # a process of its own
            found.append(pytest.param(lang, code, skip, id=name, marks=runs))
    return found


EXAMPLES = examples()


def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_are_found_and_every_skip_says_why():
    assert len(EXAMPLES) >= 20
    for param in EXAMPLES:
        skip = param.values[2]
        assert skip is None or len(skip) > 10, f"{param.id}: a skipped example needs a reason"
    ran = [p for p in EXAMPLES if p.values[2] is None]
    assert {p.values[0] for p in ran} == {"bash", "python", "yaml"}


@pytest.mark.parametrize("lang, code, skip", EXAMPLES)
def test_example_runs(lang, code, skip, tmp_path):
    if skip:
        pytest.skip(skip)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if lang == "bash":
        pibench = f"{sys.executable} -m pibench.cli"
        script = re.sub(r"(^|\s)(?:\.venv/bin/)?pibench(?=\s)", lambda m: m.group(1) + pibench, code, flags=re.M)
        done = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{script}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
    elif lang == "python":
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{code}\n{done.stdout}\n{done.stderr}"
    else:
        raw = yaml.safe_load(code)
        if "run" not in raw:
            pytest.skip("a fragment of a sweep config, not a whole one")
        from pibench.sweep.config import load_config

        path = tmp_path / "sweep.yaml"
        path.write_text(code)
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            load_config(path)
        finally:
            os.chdir(cwd)


def test_results_columns_page_lists_every_column_with_its_meaning():
    from pibench.results import LayerRow, ResultRow

    module = hooks()
    for cls in (ResultRow, LayerRow):
        table = module.render_columns(cls.__name__)
        rows = [line for line in table.splitlines()[2:]]
        assert [re.match(r"\| `(\w+)` \|", r).group(1) for r in rows] == [f.name for f in fields(cls)]
        assert all(not r.endswith("|  |") for r in rows)
    offline = next(r for r in module.render_columns("ResultRow").splitlines() if r.startswith("| `offline_bytes` "))
    assert "crypten:fss" in offline and "both parties" in offline


def test_an_undocumented_column_fails_the_build(monkeypatch):
    from dataclasses import dataclass

    import pibench.results

    @dataclass
    class Undocumented:
        run_id: str  # documented
        latency: float

    monkeypatch.setattr(pibench.results, "Undocumented", Undocumented, raising=False)
    with pytest.raises(ValueError, match="Undocumented column.s. latency have no comment"):
        hooks().render_columns("Undocumented")


def test_every_measurement_csv_is_rendered_on_a_page():
    module = hooks()
    used = set()
    for page in (ROOT / "docs").rglob("*.md"):
        text = page.read_text()
        used |= {m.group(2) for m in module.MARKER.finditer(text) if m.group(1) == "csv"}
        assert "<!-- csv" not in module.expand(text) and "<!-- columns" not in module.expand(text)
    committed = {f"data/{p.name}" for p in (ROOT / "docs" / "data").glob("*.csv")}
    assert used == committed
    table = module.render_csv(ROOT / "docs" / "data" / "bench_protocols.csv", group=2)
    assert "| resnet18 | 557,056 | crypten:tfp |" in table and "|  |  | crypten:dealer |" in table


def test_the_readmes_tables_are_what_their_csvs_say():
    module = hooks()
    readme = (ROOT / "README.md").read_text()
    assert module.TABLE_VIEW.search(readme), "README.md lost its <!-- table: ... --> marker"
    assert module.refresh_tables(readme) == readme, "a README table differs from its CSV: python docs/hooks.py README.md"
