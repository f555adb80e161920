"""Writes the stack's DAG folder: for each example file, one small file per variant that loads
it through wrap.load_variant (one file per variant, so that a task's process parses only the
example it runs, bound to the executor it runs on)."""

from __future__ import annotations

from pathlib import Path

from conformance.examples import EXECUTORS, Example

TEMPLATE = '''"""Airflow example DAG file {name} on {executor} (tests/conformance)."""

from conformance.wrap import load_variant

globals().update(load_variant(__name__, {path!r}, {variant!r}))
'''

# Put on the PYTHONPATH of every Airflow process of the stack, for ``conformance.wrap``.
IMPORT_ROOT = Path(__file__).resolve().parents[1]


def write_dag_folder(folder: Path, chosen: list[Example]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for example in chosen:
        for variant, executor in EXECUTORS.items():
            target = folder / f"{example.path.stem}__{variant}.py"
            target.write_text(
                TEMPLATE.format(
                    name=example.name, executor=executor, path=str(example.path), variant=variant
                )
            )
