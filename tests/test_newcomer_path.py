"""Every command the README names works on a fresh offline machine: run each, in the README's order, in a clean
environment (TINYGEN_DATA unset, HOME and the caches in a temporary folder, a fresh working folder), with small
--steps / --epochs so it stays fast; and every subcommand's --help."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# what each README command gets appended to stay short (the README's own options come first)
FAST = {("train", "gan"): ["--steps", "30", "--eval-samples", "100"],
        ("train", "vae"): ["--epochs", "1"],
        ("train", "classifier"): ["--epochs", "1"],
        ("eval",): ["--n", "200", "--iwae-k", "5", "--iwae-images", "5"],
        ("sample",): []}
SUBCOMMANDS = [["train", "gan"], ["train", "vae"], ["train", "classifier"], ["sample"], ["eval"],
               ["data", "mnist"], []]


def readme_commands():
    """The ``tinygen ...`` commands of the README's bash blocks, in order (comments and ``pip install`` dropped)."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("tinygen "):
                    commands.append(shlex.split(part)[1:])
    return commands


def clean_env(tmp):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TINYGEN_", "OPENBLAS_", "OMP_", "MKL_", "XDG_")) or k == "TINYGEN_NUMBA"}
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), PYTHONPATH=str(ROOT))
    return env


def tinygen(argv, cwd, env, timeout=900):
    """The installed command's path: the launcher, then tinygen.cli (from this checkout)."""
    return subprocess.run([sys.executable, "-m", "tinygen_launcher", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_readme_names_the_commands_this_test_runs():
    kinds = {tuple(c[:2]) if c[0] == "train" else (c[0],) for c in readme_commands()}
    assert kinds == set(FAST), kinds


@pytest.mark.slow
def test_every_readme_command_works_offline_in_a_clean_environment(tmp_path):
    env = clean_env(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    for argv in readme_commands():
        kind = tuple(argv[:2]) if argv[0] == "train" else (argv[0],)
        r = tinygen(argv + FAST[kind], work, env)
        shown = f"tinygen {' '.join(argv)}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        assert r.returncode == 0, shown
        assert "Traceback" not in r.stderr and "warning" not in r.stderr.lower(), shown
        if kind == ("sample",):
            assert (work / Path(argv[1]).parent / "samples_seed0.png").exists(), shown
        if argv[:2] == ["eval", "runs/gan/checkpoint.npz"]:
            assert "classifier" in r.stdout and "frechet_distance" in r.stdout, shown
    # the data came with the package, the trainers wrote where the README says, nothing else was needed
    assert (work / "runs" / "gan" / "checkpoint.npz").exists() and (work / "runs" / "vae" / "checkpoint.npz").exists()
    assert (tmp_path / "home" / ".cache" / "tinygen" / "mnist_classifier.npz").exists()


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=lambda s: " ".join(s) or "tinygen")
def test_help_of_every_subcommand_in_a_clean_environment(sub, tmp_path):
    r = tinygen(sub + ["--help"], tmp_path, clean_env(tmp_path), timeout=300)
    assert r.returncode == 0 and "usage: tinygen" in r.stdout and not r.stderr, r.stderr
    if sub[:1] in (["train"], ["sample"], ["eval"]):
        assert "--threads" in r.stdout and "(default: auto)" in r.stdout


def test_readme_commands_fail_with_one_line_when_their_inputs_are_wrong(tmp_path):
    """Each README command met in the wrong state (no checkpoint yet; an earlier run in the way) says so in one
    line with a non-zero exit, never a traceback."""
    env = clean_env(tmp_path)
    work = tmp_path / "work"
    for folder in ("gan", "vae"):  # an earlier run's checkpoint where a fresh run would write
        (work / "runs" / folder).mkdir(parents=True)
        (work / "runs" / folder / "checkpoint.npz").write_bytes(b"")
    for argv in readme_commands():
        if argv[:2] == ["train", "classifier"]:
            continue  # writes to the cache, not into a folder of runs: nothing in its way
        if argv[0] in ("sample", "eval"):
            argv = [argv[0], "runs/none/checkpoint.npz"] + argv[2:]
        r = tinygen(argv, work, env, timeout=300)
        lines = r.stderr.strip().splitlines()
        assert r.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("tinygen: error:"), r.stderr
        assert ("--resume" in lines[0]) if argv[0] == "train" else ("runs/none/checkpoint.npz" in lines[0])


def _python_blocks(path):
    """The ``python`` code blocks of a Markdown file, each with the plain block that follows it (its shown output,
    or None)."""
    text = (ROOT / path).read_text()
    found = []
    for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
        after = re.match(r"((?:[^\n]*\n){0,4}?)```\n(.*?)```", text[m.end():], flags=re.S)  # a few lines on
        found.append((m.group(1), after.group(2) if after and "```" not in after.group(1) else None))
    return found


@pytest.mark.parametrize("path", ["README.md", "docs/internals.md"])
def test_the_python_examples_of_the_docs_run_in_order(path, tmp_path):
    """A reader who pastes a page's Python blocks in order gets no error; the compile example of
    docs/internals.md prints the explain() listing the page shows after it."""
    blocks = _python_blocks(path)
    assert blocks, f"{path} has no python block"
    marker = "# ---- block end ----"
    code = "".join(f"{block}\nprint({marker!r})\n" for block, _ in blocks)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(tmp_path), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    outputs = run.stdout.split(marker + "\n")[:-1]
    assert len(outputs) == len(blocks)
    if path == "docs/internals.md":
        (printed,) = [out for (block, _), out in zip(blocks, outputs) if "explain()" in block]
        (shown,) = [shown for block, shown in blocks if "explain()" in block]
        assert printed.strip() == shown.strip()
