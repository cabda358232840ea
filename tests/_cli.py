"""Run the real console entry point (``organdetr.cli.main``) in-process and check how it refuses.

``main`` is what the ``organdetr`` script runs: InputError -> ``error: <file>: <problem>`` on stderr and exit
code 2. Running it in-process (instead of a subprocess per case) keeps the bad-input suite fast.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from pathlib import Path

from organdetr.cli import main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``organdetr ARGS...`` -> ``(exit code, stdout, stderr)``."""
    argv, formatwarning = sys.argv, warnings.formatwarning
    sys.argv = ["organdetr", *(str(a) for a in args)]
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv, warnings.formatwarning = argv, formatwarning
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root`` -> (size, SHA-256): compare before/after to prove nothing changed."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_refused(result: tuple[int, str, str], names: str | Path, *fragments: str) -> str:
    """Exit code 2, exactly one ``error: ...`` line on stderr naming ``names``, holding ``fragments``."""
    code, out, err = result
    lines = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]  # what a terminal shows
    lines = [line for line in lines if line.strip()]
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(names) in lines[0], (names, lines[0])
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_usage_error(result: tuple[int, str, str], option: str) -> None:
    """A bad option value: click's usage error (exit code 2) naming the option, no traceback."""
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err and option in err, err
