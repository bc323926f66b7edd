"""Results directories given as URIs (s3://, gs://, file://, anything pyarrow.fs opens).

Ray Tune writes the experiment itself straight to the URI (its `storage_path`). The project's own
files (search.json, optuna.db, trials.csv, best/, report.md, plots/) are written in a local working
copy, a `Mirror`, and uploaded to the URI: search.json when the search starts, optuna.db after every
finished trial, everything at the end. Reading a search back (`--resume`, `python -m tune.report
URI`) downloads the experiment into the mirror without its checkpoints; the few checkpoints a report
needs (the best trial's, the top trials' for generations) are fetched one by one.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from nanogpt.files import cache_dir
from nanogpt.errors import UserError
from tune.experiment import inside


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def _copy(src_fs, src: str, dst_fs, dst: str) -> None:
    """Copy a file or a directory tree between pyarrow file systems, making parent directories."""
    import pyarrow.fs

    if src_fs.get_file_info(src).type == pyarrow.fs.FileType.Directory:
        files = [(i.path, dst + i.path[len(src):]) for i in src_fs.get_file_info(pyarrow.fs.FileSelector(src, recursive=True))
                 if i.type == pyarrow.fs.FileType.File]
        dst_fs.create_dir(dst, recursive=True)
    else:
        files = [(src, dst)]
    for s, d in files:
        dst_fs.create_dir(d.rsplit("/", 1)[0], recursive=True)
        pyarrow.fs.copy_files(s, d, source_filesystem=src_fs, destination_filesystem=dst_fs)


class Mirror:
    """The search at URI (RESULTS_DIR_URI/NAME), worked on through the local directory `local`."""

    def __init__(self, uri: str):
        import pyarrow
        import pyarrow.fs

        self.uri = uri.rstrip("/")
        try:
            self.fs, self.root = pyarrow.fs.FileSystem.from_uri(self.uri)
        except (pyarrow.ArrowException, OSError, ValueError) as e:
            raise UserError(f"cannot open {self.uri} ({str(e).splitlines()[0]}); "
                             f"--results-dir takes a directory or a URI pyarrow knows (s3://, gs://, file://)") from None
        name = self.uri.rsplit("/", 1)[-1]
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        self.local = cache_dir().resolve() / "mirrors" / digest / name

    def _remote(self, rel: str | Path = "") -> str:
        rel = Path(rel).as_posix()
        return self.root if rel in ("", ".") else f"{self.root}/{rel}"

    def sibling(self, name: str) -> str:
        """The path (on self.fs) of a file beside the search at the URI, in its results directory."""
        parent = self.root.rsplit("/", 1)[0] if "/" in self.root else self.root
        return f"{parent}/{name}"

    def read_text(self, rel: str | Path) -> str:
        """A file of the search at the URI, read without touching the local copy."""
        with self.fs.open_input_stream(self._remote(rel)) as f:
            return f.read().decode()

    def exists(self, rel: str | Path = "") -> bool:
        import pyarrow.fs

        return self.fs.get_file_info(self._remote(rel)).type != pyarrow.fs.FileType.NotFound

    def check_writable(self) -> None:
        """Write and remove a probe file at the URI's parent (the results directory)."""
        parent = self.root.rsplit("/", 1)[0] if "/" in self.root else self.root
        probe = f"{parent}/.write-test-{self.local.parent.name}"
        try:
            self.fs.create_dir(parent, recursive=True)
            with self.fs.open_output_stream(probe) as f:
                f.write(b"")
            self.fs.delete_file(probe)
        except OSError as e:
            raise UserError(f"results directory {self.uri.rsplit('/', 1)[0]} is not writable "
                             f"({str(e).splitlines()[0]}); choose another with --results-dir") from None

    def pull(self) -> Path:
        """Download the search into the local copy, checkpoints left out (see fetch)."""
        import pyarrow.fs

        if not self.exists():
            raise UserError(f"{self.uri} does not exist: check --results-dir and the search's name")
        files = []
        for info in self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, recursive=True)):
            rel = info.path[len(self.root):].lstrip("/")
            if info.type != pyarrow.fs.FileType.File or any(p.startswith("checkpoint_") for p in rel.split("/")):
                continue
            # keys are arbitrary strings: every one is checked before anything is written
            if ".." in rel.split("/"):
                raise UserError(f"{self.uri}: the key {info.path!r} resolves outside the local copy; refusing the "
                                f"whole results directory (is it crafted?)")
            files.append((info.path, inside(self.local, rel, f"{self.uri}: the key")))
        shutil.rmtree(self.local, ignore_errors=True)
        self.local.mkdir(parents=True)
        local_fs = pyarrow.fs.LocalFileSystem()
        for src, dest in files:  # files the listing already named: no further remote lookups
            dest.parent.mkdir(parents=True, exist_ok=True)
            pyarrow.fs.copy_files(src, str(dest), source_filesystem=self.fs, destination_filesystem=local_fs)
        return self.local

    def has(self, local_path: str | Path) -> bool:
        """Whether a path under the local copy exists at the URI."""
        try:
            rel = Path(local_path).relative_to(self.local)
        except ValueError:  # not inside the copy: only the local file system can say
            return Path(local_path).exists()
        return self.exists(rel)

    def fetch(self, local_path: str | Path) -> Path:
        """Make a directory under the local copy present, downloading it from the URI if need be."""
        import pyarrow.fs

        local_path = Path(local_path)
        if not local_path.exists():
            rel = local_path.relative_to(self.local)
            tmp = local_path.with_name(local_path.name + ".part")
            shutil.rmtree(tmp, ignore_errors=True)
            _copy(self.fs, self._remote(rel), pyarrow.fs.LocalFileSystem(), str(tmp))
            tmp.rename(local_path)
        return local_path

    def push(self, *rels: str) -> None:
        """Upload files or directories of the local copy to the URI; those missing locally are skipped."""
        import pyarrow.fs

        for rel in rels:
            src = self.local / rel
            if not src.exists():
                continue
            if src.is_dir() and self.exists(rel):
                self.fs.delete_dir(self._remote(rel))  # a directory replaced as a whole (best/, plots/)
            _copy(pyarrow.fs.LocalFileSystem(), str(src), self.fs, self._remote(rel))

