"""Every Python argument is a flag of the matching command, with the command's default: read
from `resprop <command> --help`, so the two cannot drift apart."""

import inspect
import os
import re
import subprocess

import pytest

import resprop

RESPROP = os.environ.get("RESPROP_BIN", "resprop")

# Arguments with no flag: what the Python function returns instead of files.
PYTHON_ONLY = {"profile": {"arrays"}}


def cli_defaults(command):
    """{flag name with underscores: its default as help prints it, or None}."""
    text = subprocess.run([RESPROP, command, "--help"], check=True, capture_output=True,
                          text=True).stdout
    flags = {}
    # A flag's block runs from its "--name" at the start of a line to the next one.
    blocks = re.split(r"\n(?=\s+(?:-\w, )?--)", text.split("Options:", 1)[1])
    for block in blocks:
        m = re.match(r"\s+(?:-\w, )?--([\w-]+)", block)
        if m:
            d = re.search(r"\[default: ([^\]]*)\]", block)
            flags[m.group(1).replace("-", "_")] = d.group(1) if d else None
    return flags


def as_help_prints(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return None if value is False else "true"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        text = f"{value:g}"
        # clap prints 1e-4 as 0.0001 and 0.9 as 0.9.
        return repr(value) if "e" not in text else format(value, "f").rstrip("0")
    return str(value)


@pytest.mark.parametrize("name", [
    "profile", "check", "train", "paths", "lesion", "shatter", "run"])
def test_arguments_are_the_flags_with_their_defaults(name):
    flags = cli_defaults(name)
    for p in inspect.signature(getattr(resprop, name)).parameters.values():
        if p.name in PYTHON_ONLY.get(name, set()):
            continue
        if (name, p.name) == ("run", "spec"):
            continue  # positional there too
        assert p.name in flags, f"resprop.{name}({p.name}=...) is no flag of `resprop {name}`"
        if p.default is inspect.Parameter.empty:
            continue  # required in Python (lesion's weights), a flag the command checks
        assert as_help_prints(p.default) == flags[p.name], (name, p.name, p.default)


def test_every_exported_function_is_in_the_stub():
    import pathlib

    stub = (pathlib.Path(resprop.__file__).parent / "__init__.pyi").read_text()
    declared = set(re.findall(r"^def (\w+)\(", stub, re.M))
    assert set(resprop.__all__) == declared
    assert all(callable(getattr(resprop, name)) for name in resprop.__all__)
