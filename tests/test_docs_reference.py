"""docs/reference.md is the code's contract, table by table: settings, metrics, CLI and the DETECTOR_* names
that the deploy files use. Each test reads the code (never a copy of it) and fails when the doc drifts."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any, Literal

import click
from prometheus_client import generate_latest
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from detector.cli import cli
from detector.serve.metrics import PrometheusObserver
from detector.settings import SECRET_FILE_SETTINGS, Settings, env_name

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference.md"
SETTINGS_HEADER = "| setting | environment variable | type | default | meaning |"
METRICS_HEADER = "| name | type | labels | help | meaning |"
OPTIONS_HEADER = "| option | default | meaning |"
ENV_NAME = re.compile(r"DETECTOR_[A-Z0-9_]+")


# -- reading the doc ------------------------------------------------------------------------------------


def section(text: str, heading: str) -> str:
    """The body of the section whose heading line is ``heading`` (e.g. ``## Settings``), up to the next
    heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    lines = text.splitlines()
    assert heading in lines, f"no heading {heading!r}"
    start = lines.index(heading) + 1
    end = next(
        (i for i in range(start, len(lines)) if re.match(rf"#{{1,{len(level)}}} ", lines[i])),
        len(lines),
    )
    return "\n".join(lines[start:end])


def cells(line: str) -> list[str]:
    """A table row's cells, stripped; ``\\|`` inside a cell is a literal bar."""
    parts = re.split(r"(?<!\\)\|", line.strip())
    assert parts[0] == "", f"not a table row: {line!r}"
    assert parts[-1] == "", f"not a table row: {line!r}"
    return [part.strip().replace("\\|", "|") for part in parts[1:-1]]


def tables(text: str, header: str) -> list[list[str]]:
    """The rows (as cells) of every table in ``text`` whose header line is ``header``."""
    rows: list[list[str]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != header:
            continue
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            rows.append(cells(row))
    return rows


def quoted(cell: str) -> list[str]:
    """The `backticked` words of a cell."""
    return re.findall(r"`([^`]+)`", cell)


def reference() -> str:
    return REFERENCE.read_text()


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# -- settings -------------------------------------------------------------------------------------------


def settings_fields(model: type[BaseModel] = Settings, prefix: str = "") -> dict[str, FieldInfo]:
    """Every leaf setting by dotted name, walking the nested sections."""
    out: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.update(settings_fields(annotation, f"{prefix}{name}."))
        else:
            out[prefix + name] = field
    return out


def env_names(dotted: str) -> set[str]:
    """The variables that set ``dotted``: its own, and the ``_FILE`` form of a secret."""
    name = env_name(dotted)
    return {name, name + "_FILE"} if dotted in SECRET_FILE_SETTINGS else {name}


def all_env_names() -> set[str]:
    return {name for dotted in settings_fields() for name in env_names(dotted)}


def render_default(field: FieldInfo) -> str:
    """A default as the doc writes it: JSON (which YAML reads too), in backticks."""
    return f"`{json.dumps(to_jsonable_python(field.get_default(call_default_factory=True)))}`"


def type_words(annotation: Any) -> list[str]:
    """Words the type cell must hold for ``annotation``: each choice of a Literal, the kind of value, and
    ``null`` for an optional one."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return [f"`{choice}`" for choice in args]
    if type(None) in args:  # X | None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return [*type_words(inner), "null"]
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string", SecretStr: "secret", Path: "path"}
    if annotation in kinds:
        return [kinds[annotation]]
    if typing.get_origin(annotation) is list:
        return ["list"]
    raise AssertionError(f"no words for type {annotation!r}: teach type_words")


def settings_rows() -> list[list[str]]:
    return tables(section(reference(), "## Settings"), SETTINGS_HEADER)


def test_the_settings_tables_list_exactly_the_fields_of_settings() -> None:
    """One row per leaf of the settings tree, none missing, none extra, none twice."""
    documented = [quoted(row[0])[0] for row in settings_rows()]
    assert len(documented) == len(set(documented)), sorted(d for d in documented if documented.count(d) > 1)
    fields = settings_fields()
    assert set(documented) == set(fields), {
        "undocumented": sorted(set(fields) - set(documented)),
        "not settings": sorted(set(documented) - set(fields)),
    }


def test_each_setting_row_has_its_environment_names_default_and_type() -> None:
    """Each row names the setting's environment variable (and the _FILE form of a secret), its default as
    the model has it, rendered as JSON, and a type cell that says what the model accepts."""
    fields = settings_fields()
    problems = []
    for row in settings_rows():
        assert len(row) == 5, row
        dotted = quoted(row[0])[0]
        if dotted not in fields:
            continue  # reported by the test above
        field = fields[dotted]
        if set(quoted(row[1])) != env_names(dotted):
            problems.append(f"{dotted}: environment {quoted(row[1])}, expected {sorted(env_names(dotted))}")
        if row[3] != render_default(field):
            problems.append(f"{dotted}: default {row[3]}, expected {render_default(field)}")
        missing = [word for word in type_words(field.annotation) if word not in row[2]]
        if missing:
            problems.append(f"{dotted}: type {row[2]!r} lacks {missing}")
        if not row[4]:
            problems.append(f"{dotted}: no meaning")
    assert not problems, "\n".join(problems)


def non_setting_variables() -> set[str]:
    """DETECTOR_* variables the reference documents as not being settings (in their own subsection)."""
    text = section(section(reference(), "## Settings"), "### Environment variables that are not settings")
    return {name for name in ENV_NAME.findall(text) if name not in all_env_names()}


def deploy_files() -> list[Path]:
    found = [ROOT / "Dockerfile"]
    for folder in (ROOT / "deploy", ROOT / "configs"):
        found += sorted(p for p in folder.rglob("*") if p.is_file())
    return found


def test_every_detector_name_in_deploy_dockerfile_and_configs_is_documented() -> None:
    """Each DETECTOR_* name written in deploy/, the Dockerfile or configs/ appears in the README or docs/,
    and is a setting's variable (its _FILE form for a secret) or a documented non-setting variable."""
    seen: dict[str, set[str]] = {}
    for path in deploy_files():
        for name in ENV_NAME.findall(path.read_text(errors="replace")):
            seen.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert len(seen) >= 10, sorted(seen)  # the deploy files do name settings: a search that finds none is broken
    docs = "\n".join(path.read_text() for path in doc_files())
    known = all_env_names() | non_setting_variables()
    problems = []
    for name, where in sorted(seen.items()):
        if not re.search(rf"(?<![A-Z0-9_]){name}(?![A-Z0-9_])", docs):
            problems.append(f"{name} (in {', '.join(sorted(where))}) is not in README.md or docs/")
        if name not in known:
            problems.append(f"{name} (in {', '.join(sorted(where))}) is neither a setting nor documented as a variable")
    assert not problems, "\n".join(problems)


# -- metrics --------------------------------------------------------------------------------------------


def exposed_families() -> dict[str, tuple[str, tuple[str, ...], str]]:
    """Name (as the scrape's # TYPE line has it) -> (type, label names, help) of every family the
    observer's registry exposes."""
    registry = PrometheusObserver().registry
    out = {}
    # prometheus_client has no public way to list a family's label names before it has a sample
    for collector in list(registry._collector_to_names):
        (family,) = collector.describe()
        name = family.name + ("_total" if family.type == "counter" else "")
        out[name] = (family.type, tuple(getattr(collector, "_labelnames", ())), family.documentation)
    scrape = generate_latest(registry).decode()
    typed = {m[1] for m in re.finditer(r"^# TYPE (\S+) \S+$", scrape, re.M) if not m[1].endswith("_created")}
    assert typed == set(out), "the scrape's families are not the collectors' (is a counter still name_total?)"
    return out


def metrics_rows() -> list[list[str]]:
    return tables(section(reference(), "## Metrics"), METRICS_HEADER)


def test_the_metrics_table_lists_exactly_the_exposed_families() -> None:
    """One row per family /metrics exposes, with its type, its labels and its help text."""
    exposed = exposed_families()
    rows = metrics_rows()
    documented = [quoted(row[0])[0] for row in rows]
    assert len(documented) == len(set(documented)), documented
    assert set(documented) == set(exposed), {
        "undocumented": sorted(set(exposed) - set(documented)),
        "not exposed": sorted(set(documented) - set(exposed)),
    }
    problems = []
    for row in rows:
        assert len(row) == 5, row
        name = quoted(row[0])[0]
        kind, labels, help_text = exposed[name]
        if row[1] != kind:
            problems.append(f"{name}: type {row[1]!r}, exposed as {kind!r}")
        if set(quoted(row[2])) != set(labels):
            problems.append(f"{name}: labels {quoted(row[2])}, exposed with {list(labels)}")
        if row[3] != help_text:
            problems.append(f"{name}: help {row[3]!r}, exposed with {help_text!r}")
    assert not problems, "\n".join(problems)


def test_the_metrics_table_is_the_only_one() -> None:
    """No other doc keeps a copy of the families table; docs/metrics.md links to the reference's."""
    for path in doc_files():
        if path == REFERENCE:
            continue
        copies = re.findall(r"^\| `detector_\w+` \| (?:counter|gauge|histogram|summary) \|.*$", path.read_text(), re.M)
        assert not copies, f"{path.name} repeats rows of the metrics table: {copies[:2]}"
    assert "(reference.md#metrics)" in (ROOT / "docs" / "metrics.md").read_text()


# -- command line ---------------------------------------------------------------------------------------


def command_sections() -> dict[str, str]:
    """Command name -> the body of its ``### `detector NAME` `` subsection of the CLI section."""
    text = section(reference(), "## Command line")
    names = re.findall(r"^### `detector ([a-z-]+)`$", text, re.M)
    return {name: section(text, f"### `detector {name}`") for name in names}


def option_names(cell: str) -> list[str]:
    return re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", cell)


def test_the_cli_section_documents_every_command() -> None:
    """One subsection per command of the click app, none for a command that does not exist, and the
    group's own options (--version, --help) in the section's introduction."""
    documented = list(command_sections())
    assert len(documented) == len(set(documented)), documented
    assert set(documented) == set(cli.commands), {
        "undocumented": sorted(set(cli.commands) - set(documented)),
        "not commands": sorted(set(documented) - set(cli.commands)),
    }
    intro = section(reference(), "## Command line").split("\n### ", 1)[0]
    group_options = {opt for p in cli.params if isinstance(p, click.Option) for opt in p.opts + p.secondary_opts}
    group_options |= set(cli.get_help_option_names(click.Context(cli)))
    assert group_options <= set(option_names(intro)), group_options - set(option_names(intro))


def test_each_command_lists_its_usage_and_exactly_its_options() -> None:
    """Each command's subsection shows its usage line (its arguments included) and an options table with a
    row per option and none for an option it lacks; required options say so, and shown defaults match."""
    sections = command_sections()
    parent = click.Context(cli, info_name="detector")
    problems = []
    for name, command in sorted(cli.commands.items()):
        body = sections.get(name)
        if body is None:
            continue  # reported by the test above
        ctx = click.Context(command, info_name=name, parent=parent)
        usage = " ".join(["detector", name, *command.collect_usage_pieces(ctx)])
        if f"`{usage}`" not in body:
            problems.append(f"{name}: no usage line `{usage}`")
        rows = {}
        for row in tables(body, OPTIONS_HEADER):
            assert len(row) == 3, row
            for opt in option_names(row[0]):
                if opt in rows:
                    problems.append(f"{name}: {opt} documented twice")
                rows[opt] = row
        options = [p for p in command.params if isinstance(p, click.Option)]
        actual = {opt for p in options for opt in p.opts + p.secondary_opts}
        if set(rows) != actual:
            problems.append(
                f"{name}: options undocumented {sorted(actual - set(rows))}, not options {sorted(set(rows) - actual)}"
            )
        for param in options:
            row = rows.get(param.opts[0])
            if row is None:
                continue
            if param.required and row[1] != "required":
                problems.append(f"{name} {param.opts[0]}: required, documented default {row[1]!r}")
            default = param.default
            if param.show_default and default is not None and not param.required and str(default) not in row[1]:
                problems.append(f"{name} {param.opts[0]}: default {default!r}, documented {row[1]!r}")
            if not row[2]:
                problems.append(f"{name} {param.opts[0]}: no meaning")
    assert not problems, "\n".join(problems)


# -- links ----------------------------------------------------------------------------------------------


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", path.read_text(), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_links_to_and_from_the_reference_resolve() -> None:
    """Every link of the reference and of docs/metrics.md to a section of a local Markdown file, and every
    link of the README to the reference, points at a heading that exists."""
    section_link = r"\]\(([^)\s]*#[^)\s]+)\)"
    links = [
        (path, link)
        for path in (REFERENCE, ROOT / "docs" / "metrics.md")
        for link in re.findall(section_link, path.read_text())
    ]
    readme = (ROOT / "README.md").read_text()
    links += [(ROOT / "README.md", link) for link in re.findall(r"\]\((docs/reference\.md#[^)\s]+)\)", readme)]
    assert any(src.name == "README.md" for src, _ in links), "the README links to no section of the reference"
    problems = []
    for source, link in links:
        target, _, anchor = link.partition("#")
        path = (source.parent / target).resolve() if target else source
        if not path.is_file():
            problems.append(f"{source.name}: {link}: no file {target}")
        elif anchor not in anchors(path):
            problems.append(f"{source.name}: {link}: no such heading in {path.name}")
    assert "docs/reference.md" in readme.split("\n## ", 1)[0], "the README's first section does not link to it"
    assert not problems, "\n".join(problems)
