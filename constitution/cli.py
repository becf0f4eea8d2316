"""`cai constitution validate | show | list | import`.

Argument parsing and printing only; the work is done by :mod:`constitution.loader` and
:mod:`constitution.importers`. ``validate`` exits 1 when any file is invalid (like a linter);
the other commands exit 2 with one ``error:`` message on bad input, like the rest of ``cai``.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
import yaml

from .loader import ConstitutionError, library_names, load_constitution, resolve_constitution
from .schema import Constitution

app = typer.Typer(
    help="Check, inspect and import constitutions (the YAML principles everything else is built from).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command("validate")
def validate_command(
    files: List[str] = typer.Argument(..., help="Constitution files (.yaml/.yml/.json) or shipped names such as 'harmless'."),
) -> None:
    """Validate constitution files; print OK name@version hash for each, or what is wrong and where.

    Exits 1 if any file is invalid.

    \b
    Examples:
      cai constitution validate constitution/library/harmless.yaml
      cai constitution validate my_rules.yaml harmless helpful_honest
    """
    failed = 0
    for item in files:
        try:
            c = resolve_constitution(item)
        except ConstitutionError as e:
            failed += 1
            typer.echo(f"FAIL {item}", err=True)
            typer.echo(str(e), err=True)
            continue
        typer.echo(f"OK {c.ref} {c.content_hash} {item}")
    if failed:
        typer.echo(f"{failed} of {len(files)} constitution(s) invalid", err=True)
        raise typer.Exit(1)


def _summary(c: Constitution) -> dict:
    return {
        "ref": c.ref,
        "name": c.name,
        "version": c.version,
        "hash": c.content_hash,
        "counts": {
            "critique_revision": len(c.critique_revision),
            "feedback": len(c.feedback),
            "few_shot": len(c.few_shot),
            "labeling_examples": len(c.labeling_examples),
            "templates": len(c.templates),
        },
    }


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


@app.command("show")
def show_command(
    file: str = typer.Argument(..., help="A constitution file or a shipped name such as 'harmless'."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (summary + full content) instead of text."),
) -> None:
    """Show a constitution: name@version, content hash, counts, then every principle by id with its text.

    \b
    Examples:
      cai constitution show harmless
      cai constitution show my_rules.yaml --json | python -m json.tool
    """
    try:
        c = resolve_constitution(file)
    except ConstitutionError as e:
        raise _fail(str(e)) from None
    summary = _summary(c)
    if as_json:
        typer.echo(json.dumps({**summary, "constitution": c.model_dump(mode="json")}, ensure_ascii=False, indent=2))
        return
    counts = summary["counts"]
    typer.echo(f"{c.ref}  hash {c.content_hash}")
    if c.description:
        typer.echo(c.description)
    typer.echo(
        f"{counts['critique_revision']} critique/revision principles, {counts['feedback']} feedback principles, "
        f"{counts['few_shot']} few-shot examples, {counts['labeling_examples']} labeling examples, "
        f"{counts['templates']} templates"
    )
    if c.system_prompt:
        typer.echo("\nsystem prompt:\n" + _indent(c.system_prompt, "  "))
    if c.critique_revision:
        typer.echo("\ncritique/revision principles:")
        for p in c.critique_revision:
            extra = f"  weight {p.weight:g}" if p.weight != 1.0 else ""
            tags = f"  [{', '.join(p.tags)}]" if p.tags else ""
            typer.echo(f"  {p.id}{tags}{extra}")
            typer.echo("    critique:\n" + _indent(p.critique))
            typer.echo("    revision:\n" + _indent(p.revision))
    if c.feedback:
        typer.echo("\nfeedback principles:")
        for p in c.feedback:
            flags = "  (inverted: asks for the worse response)" if p.invert else ""
            extra = f"  weight {p.weight:g}" if p.weight != 1.0 else ""
            typer.echo(f"  {p.id}{flags}{extra}\n" + _indent(p.text))
    if c.few_shot:
        typer.echo("\nfew-shot examples:")
        for i, ex in enumerate(c.few_shot):
            typer.echo(f"  [{i}] principle {ex.principle or '-'}: {ex.prompt.splitlines()[0][:90]}")
    if c.templates:
        typer.echo("\ntemplates: " + ", ".join(sorted(c.templates)))


@app.command("list")
def list_command() -> None:
    """List the constitutions shipped with the toolkit (usable by name wherever a constitution is asked for).

    \b
    Examples:
      cai constitution list
      cai constitution show helpful_honest
    """
    for name in library_names():
        try:
            c = resolve_constitution(name)
        except ConstitutionError as e:  # a broken shipped file should be visible, not hide the others
            typer.echo(f"{name}: INVALID ({e})")
            continue
        typer.echo(f"{c.ref}  {c.content_hash}  {len(c.critique_revision)} critique/revision, {len(c.feedback)} feedback")


# ---- import -------------------------------------------------------------------------------------


class ImportFormat(str, Enum):
    hf = "hf"
    anthropic = "anthropic"


class _PromptDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so imported prompts stay readable and editable; no
    anchors/aliases for repeated values (the loader refuses them)."""

    def ignore_aliases(self, data):
        return True


def _str_representer(dumper, text: str):
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_PromptDumper.add_representer(str, _str_representer)


def constitution_to_yaml(c: Constitution, header: str = "") -> str:
    """YAML text for a constitution, leaving out fields at their defaults; loads back to the same hash."""
    data = c.model_dump(mode="json", exclude_defaults=True)
    data = {"name": c.name, "version": c.version, **data}  # required keys first, whatever the defaults
    body = yaml.dump(data, Dumper=_PromptDumper, sort_keys=False, allow_unicode=True, width=100)
    return header + body


def _write_new_file(path: Path, text: str, force: bool) -> None:
    """Write via a temporary file + rename, so a failure never leaves half a file (or clobbers one)."""
    if path.exists() and not force:
        raise _fail(f"{path} already exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@app.command("import")
def import_command(
    file: Path = typer.Argument(..., help="The third-party JSON file to import."),
    fmt: ImportFormat = typer.Option(..., "--format", "-f", help="hf: Hugging Face llm-swarm JSON; anthropic: Anthropic's critique/revision JSON."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the constitution YAML."),
    feedback: Optional[Path] = typer.Option(None, "--feedback", help="anthropic only: JSON list of feedback principles ('... Options:')."),
    name: Optional[str] = typer.Option(None, "--name", help="Constitution name (default: the input file's stem)."),
    version: str = typer.Option("1.0", "--version", help="Constitution version."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Convert a Hugging Face or Anthropic constitution file into our YAML format (validated on the way out).

    Anything skipped or guessed (few-shot conversations of another shape, feedback questions marked
    as inverted) is reported as a warning; review the YAML before using it.

    \b
    Examples:
      cai constitution import anthropic_constitution.json --format hf -o constitutions/hf.yaml
      cai constitution import CritiqueRevisionInstructions.json --format anthropic \\
          --feedback ConstitutionalPrinciples.json --name anthropic-cai --version 2022.12 -o anthropic.yaml
      cai constitution validate anthropic.yaml
    """
    from .importers import import_anthropic, import_hf

    if feedback is not None and fmt is not ImportFormat.anthropic:
        raise _fail("--feedback is only used with --format anthropic")
    if out.exists() and not force:  # check before the work, and again when writing
        raise _fail(f"{out} already exists; pass --force to overwrite it")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if fmt is ImportFormat.hf:
                c = import_hf(file, name=name, version=version)
            else:
                c = import_anthropic(file, feedback, name=name, version=version)
        except ConstitutionError as e:
            raise _fail(str(e)) from None
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)

    sources = f"{file.name}" + (f" and {feedback.name}" if feedback else "")
    header = f"# Imported by `cai constitution import --format {fmt.value}` from {sources}.\n"
    text = constitution_to_yaml(c, header)
    _write_new_file(out, text, force)
    try:  # the file we wrote must load back to exactly what we imported
        reloaded = load_constitution(out)
    except ConstitutionError as e:  # pragma: no cover - would be a bug in constitution_to_yaml
        raise _fail(f"the written file does not validate (a bug, please report): {e}") from None
    if reloaded.content_hash != c.content_hash:  # pragma: no cover - same
        raise _fail(f"{out} does not load back to the imported content (a bug, please report)")
    typer.echo(
        f"wrote {out}: {c.ref} {c.content_hash} ({len(c.critique_revision)} critique/revision, "
        f"{len(c.feedback)} feedback, {len(c.few_shot)} few-shot)"
    )
