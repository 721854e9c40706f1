"""The README's benchmark table says what the results files say, number for number."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_benchmark_table_matches_the_results_files():
    numbers = load_script("readme_numbers")
    text = (ROOT / "README.md").read_text()
    assert text.count(numbers.BEGIN) == 1 and text.count(numbers.END) == 1
    assert numbers.render_readme(text) == text, (
        "README.md's benchmark table is out of date: run python benchmarks/readme_numbers.py")


def test_every_results_file_has_a_row():
    numbers = load_script("readme_numbers")
    files = {p.name for p in (ROOT / "benchmarks" / "results").glob("*.json")}
    shown = set(numbers.ROWS)
    assert files <= shown, f"results without a README row: {sorted(files - shown)}"


def test_a_changed_number_is_caught(tmp_path):
    numbers = load_script("readme_numbers")
    import json
    import shutil

    for path in (ROOT / "benchmarks" / "results").glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    text = numbers.render_readme((ROOT / "README.md").read_text())
    data = json.loads((tmp_path / "discovery.json").read_text())
    data["replay"]["max_queries"] += 1
    (tmp_path / "discovery.json").write_text(json.dumps(data))
    assert numbers.render_readme(text, tmp_path) != text
