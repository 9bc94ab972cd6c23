"""The README's commands run as a newcomer pastes them: every `bash` and `python` code block is run
from the repository's root, offline, unless the line right above it is
`<!-- readme-test: skip: REASON -->` (installs, network, one's own data, minutes of compute).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SKIP = re.compile(r"<!-- readme-test: skip: (?P<why>[^>]*\S)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<code>.*?)^```\s*$", re.S | re.M)
RUN_TIMEOUT_S = 900   # a cold model load and a forward on a busy 2-core machine


def blocks(text: str = README) -> list[dict]:
    """Every fenced code block: its language, code, line number and skip reason (None: run it)."""
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.match(before.strip())
        out.append({"lang": m.group("lang"), "code": m.group("code"), "line": text[:m.start()].count("\n") + 1,
                    "skip": skip.group("why") if skip else None})
    return out


RUN = [b for b in blocks() if b["lang"] in ("bash", "python") and b["skip"] is None]


def test_the_blocks_that_matter_run_and_every_skip_says_why():
    code = [b for b in blocks() if b["lang"] in ("bash", "python")]
    assert all(b["lang"] for b in blocks()), "a code block without a language"
    assert any("gtp.patch(" in b["code"] for b in RUN), "the library snippet must run"
    assert any("python -m gtp predict" in b["code"] for b in RUN), "the CLI's predict must run"
    assert any("python -m gtp models" in b["code"] for b in RUN)
    assert all(len(b["skip"]) > 10 for b in code if b["skip"] is not None)
    # The test command is the one CI runs, verbatim.
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = next(b["code"].strip() for b in code if "python -m pytest" in b["code"])
    assert test_command in ci.splitlines()


def test_the_skip_marker_is_read_only_right_above_a_block():
    text = ("<!-- readme-test: skip: needs the network -->\n```bash\necho a\n```\n\n"
            "<!-- readme-test: skip: not adjacent -->\n\ntext\n```python\nprint(1)\n```\n")
    assert [(b["lang"], b["skip"]) for b in blocks(text)] == [("bash", "needs the network"), ("python", None)]


@pytest.mark.parametrize("block", RUN, ids=[f"line{b['line']}-{b['lang']}" for b in RUN])
def test_readme_block_runs(block, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if block["lang"] == "python":   # pasted into `python` at the repository's root
        cmd = [sys.executable, "-c", block["code"]]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", block["code"]]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, f"README line {block['line']} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    if "python -m gtp predict" in block["code"]:
        assert "GMACs" in done.stdout, done.stdout[-2000:]
    if "gtp.patch(" in block["code"]:
        assert "tensor([[" in done.stdout, done.stdout   # the propagated ids of block 1
