"""The README's Python section runs as written: its `python -c` line and its code block, from
a folder holding the repository's experiments/ (the README's commands run from the
repository's root)."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def python_section():
    text = (ROOT / "README.md").read_text()
    return text.split("### Python\n", 1)[1].split("\n### ", 1)[0]


def test_the_two_commands_a_python_user_types(tmp_path):
    sh = re.search(r"```sh\n(.*?)```", python_section(), re.S).group(1)
    lines = [l.split("  #")[0].strip() for l in sh.strip().splitlines()]
    assert lines[0] == "pip install ./python"  # what .ci/run does in a fresh environment
    m = re.fullmatch(r'python -c "(.*)"', lines[1])
    assert m, lines[1]
    out = subprocess.run([sys.executable, "-c", m.group(1)], cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout
    assert "[5 rows x 21 columns]" in out and "scale:0.5" in out, out


def test_the_readme_code_block_runs(tmp_path):
    block = re.search(r"```python\n(.*?)```", python_section(), re.S).group(1)
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    subprocess.run([sys.executable, "-c", block], cwd=tmp_path, check=True)
    assert (tmp_path / "results" / "scaling" / "profile.csv").is_file()
