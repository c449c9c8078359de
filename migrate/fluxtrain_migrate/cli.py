"""Command line: ``fluxtrain-migrate [options] PATH...`` and ``fluxtrain-migrate compare``.

Exit status is a bitmask (docs/migrate.md):
0 nothing to do; 1 files need (or got) changes; 2 markers remain; 4 a file failed;
8 ``--verify`` found a difference; 32 usage error.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from fluxtrain_migrate.engine import ALL_RULE_IDS, migrate_bytes, resolve_rules
from fluxtrain_migrate.report import MARKERS, FileResult
from fluxtrain_migrate.transforms import RULES

EXIT_CHANGES = 1
EXIT_MARKERS = 2
EXIT_FAILED = 4
EXIT_VERIFY = 8
EXIT_USAGE = 32

_SKIP_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "__pycache__", "node_modules", ".tox",
              ".mypy_cache", ".ruff_cache", ".pytest_cache", "build", "dist"}


class UsageError(Exception):
    """Bad command line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs)."""
    p = _Parser(
        prog="fluxtrain-migrate",
        description="Rewrite implicit-style fluxtrain scripts into the explicit style. "
        "By default nothing is written: a summary says what would change.",
        epilog="Exit status (bitmask): 1 changes needed/made, 2 markers left, 4 a file "
        "failed, 8 --verify found a difference, 32 usage error. "
        "Subcommands: 'fluxtrain-migrate compare OLD NEW', 'fluxtrain-migrate list'.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files and directories")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite files in place")
    mode.add_argument("--check", action="store_true",
                      help="never write; exit status says whether migration is needed")
    mode.add_argument("--output-dir", metavar="DIR", type=Path,
                      help="write a migrated copy of the inputs under DIR")
    p.add_argument("--diff", action="store_true", help="print a unified diff")
    p.add_argument("--report", metavar="FILE", type=Path,
                   help="write every change and marker with file:line:col and rule id")
    p.add_argument("--format", choices=("text", "json"), default="text", help="report format")
    p.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                   help="process pool size (default 1)")
    p.add_argument("--select", action="append", metavar="IDS",
                   help="only these rules (comma-separated ids, e.g. FM001,FM003)")
    p.add_argument("--disable", action="append", metavar="IDS", help="skip these rules")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verify", action="store_true",
                   help="after migrating, run old and new scripts and compare their traces")
    p.add_argument("-q", "--quiet", action="store_true", help="only the summary line")
    return p


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def discover(paths: Iterable[Path]) -> list[tuple[Path, Path]]:
    """(file, root) for every .py file under the inputs, sorted, de-duplicated."""
    seen: set[Path] = set()
    out: list[tuple[Path, Path]] = []
    for p in paths:
        if not p.exists():
            raise UsageError(f"{p}: no such file or directory")
        files: list[tuple[Path, Path]]
        if p.is_file():
            files = [(p, p.parent)]  # a file given by name lands at DIR/name
        else:
            files = []
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames
                                     if d not in _SKIP_DIRS and not d.startswith("."))
                for fname in sorted(filenames):
                    if fname.endswith(".py"):
                        files.append((Path(dirpath) / fname, p))
        for f, root in files:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append((f, root))
    return out


def _work(item: tuple[str, frozenset[str]]) -> FileResult:
    path, rules = item
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return FileResult(path=path, error=f"{path}:1:1: cannot read: {e}")
    return migrate_bytes(data, path, set(rules))


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else None
    if mode is not None and not mode & stat.S_IWUSR:
        # os.replace needs only a writable directory; honour the file's own mode.
        raise PermissionError(errno.EACCES, "file is read-only", str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _progress(total: int, enabled: bool) -> object | None:
    if not enabled or total < 2 or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, file=sys.stderr, unit="file", leave=False)


def run(argv: Sequence[str]) -> int:
    """Parse ``argv`` and migrate; returns the exit status."""
    args = build_parser().parse_args(list(argv))
    try:
        rules = resolve_rules(_split(args.select), _split(args.disable))
    except ValueError as e:
        print(f"fluxtrain-migrate: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.jobs < 1:
        print("fluxtrain-migrate: error: -j must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.verify and not (args.write or args.output_dir):
        print("fluxtrain-migrate: error: --verify needs --write or --output-dir",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        files = discover(Path(p) for p in args.paths)
        if args.output_dir is not None:
            _check_output_dir(args.output_dir, [Path(p) for p in args.paths])
    except UsageError as e:
        print(f"fluxtrain-migrate: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    items = [(str(f), frozenset(rules)) for f, _root in files]
    results: list[FileResult] = []
    bar = _progress(len(items), not args.no_progress)
    if args.jobs > 1 and len(items) > 1:
        with ProcessPoolExecutor(max_workers=min(args.jobs, len(items))) as pool:
            for r in pool.map(_work, items, chunksize=max(1, len(items) // (4 * args.jobs))):
                results.append(r)
                if bar is not None:
                    bar.update(1)  # type: ignore[attr-defined]
    else:
        for it in items:
            results.append(_work(it))
            if bar is not None:
                bar.update(1)  # type: ignore[attr-defined]
    if bar is not None:
        bar.close()  # type: ignore[attr-defined]

    status = 0
    pairs: list[tuple[Path, Path]] = []
    for (f, root), r in zip(files, results):
        if r.error:
            status |= EXIT_FAILED
            print(f"error: {r.error}", file=sys.stderr)
            continue
        if r.changed:
            status |= EXIT_CHANGES
        if r.markers:
            status |= EXIT_MARKERS
        if args.diff and r.changed:
            sys.stdout.write(_diff(r))
        if args.write and r.changed and r.new_bytes is not None:
            try:
                write_atomic(f, r.new_bytes)
            except OSError as e:
                status |= EXIT_FAILED
                print(f"error: {f}:1:1: cannot write: {e}", file=sys.stderr)
                continue
            pairs.append((f, f))
        if args.output_dir is not None and r.new_bytes is not None:
            dest = args.output_dir / f.relative_to(root)
            write_atomic(dest, r.new_bytes)
            pairs.append((f, dest))
    if args.report is not None:
        _write_report(args.report, args.format, results)
    if not args.quiet:
        for r in results:
            for m in r.markers:
                print(f"{m.path}:{m.line}:{m.col + 1}: {m.code} {m.message}")
    _summary(results, args)
    if args.verify:
        status |= _verify(pairs)
    return status


def _check_output_dir(out: Path, inputs: list[Path]) -> None:
    o = out.resolve()
    for p in inputs:
        r = p.resolve()
        if o == r or o.is_relative_to(r) or (r.is_dir() and r.is_relative_to(o)):
            raise UsageError(f"--output-dir {out} overlaps the input {p}")
    if o.exists() and any(o.iterdir()):
        raise UsageError(f"--output-dir {out} exists and is not empty")


def _diff(r: FileResult) -> str:
    old = (r.old_bytes or b"").decode("utf-8", "replace").splitlines(keepends=True)
    new = (r.new_bytes or b"").decode("utf-8", "replace").splitlines(keepends=True)
    return "".join(difflib.unified_diff(old, new, f"a/{r.path}", f"b/{r.path}"))


def _summary(results: list[FileResult], args: argparse.Namespace) -> None:
    changed = sum(r.changed for r in results)
    markers = sum(len(r.markers) for r in results)
    failed = sum(r.error is not None for r in results)
    verb = "migrated" if args.write or args.output_dir else "would change"
    print(f"{len(results)} file(s) checked, {changed} {verb}, {markers} marker(s) left, "
          f"{failed} failed", file=sys.stderr)


def _write_report(path: Path, fmt: str, results: list[FileResult]) -> None:
    if fmt == "json":
        data = {
            "files": [r.to_json() for r in results],
            "summary": {
                "files": len(results),
                "changed": sum(r.changed for r in results),
                "markers": sum(len(r.markers) for r in results),
                "failed": sum(r.error is not None for r in results),
            },
        }
        text = json.dumps(data, indent=2) + "\n"
    else:
        lines = []
        for r in results:
            if r.error:
                lines.append(f"{r.error} [error]")
            for c in r.changes:
                lines.append(f"{c.path}:{c.line}:{c.col + 1}: {c.rule} {c.message}")
            for m in r.markers:
                lines.append(f"{m.path}:{m.line}:{m.col + 1}: {m.code} TODO {m.message}")
        text = "\n".join(lines) + ("\n" if lines else "")
    write_atomic(path, text.encode())


def _verify(pairs: list[tuple[Path, Path]]) -> int:
    try:
        compare = importlib.import_module("fluxtrain_migrate.compare")
    except ImportError:
        print("fluxtrain-migrate: error: --verify needs fluxtrain_migrate.compare, which is "
              "not installed in this version", file=sys.stderr)
        return EXIT_VERIFY
    code = compare.verify_pairs(pairs)
    return EXIT_VERIFY if code else 0


def list_rules() -> int:
    """``fluxtrain-migrate list``: the rules and marker codes."""
    for r in RULES:
        print(f"{r.RULE_ID}  {r.NAME:<11} {r.DESCRIPTION}")
    for code, text in MARKERS.items():
        print(f"{code}  marker      {text}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "compare":
        try:
            compare = importlib.import_module("fluxtrain_migrate.compare")
        except ImportError:
            print("fluxtrain-migrate: error: the compare subcommand needs "
                  "fluxtrain_migrate.compare, which is not installed in this version",
                  file=sys.stderr)
            return EXIT_USAGE
        return int(compare.main(args[1:]) or 0)
    if args and args[0] == "list":
        return list_rules()
    try:
        return run(args)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE


__all__ = ["main", "run", "ALL_RULE_IDS"]
