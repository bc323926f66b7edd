"""`python -m tune.dashboard RESULTS_DIR/NAME [--port P]`: the search's Optuna study (optuna.db) in
optuna-dashboard, served on 127.0.0.1 only until Ctrl-C. Needs the extra: pip install -e '.[dashboard]'."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from nanogpt.errors import UserError

HOST = "127.0.0.1"  # never another interface: the dashboard can edit and delete studies
INSTALL = "pip install -e '.[dashboard]'"


class _Server(ThreadingMixIn, WSGIServer):  # as optuna-dashboard's own CLI: a browser asks for several files at once
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # one stderr line per request otherwise
        pass


def study_of(path: str | Path) -> tuple[Path, str]:
    """(optuna.db, study name) of the search at `path`; the name is search.json's, else the directory's."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a directory: pass RESULTS_DIR/NAME of a search")
    db = path / "optuna.db"
    try:
        is_sqlite = db.open("rb").read(16) == b"SQLite format 3\0"
    except OSError:
        raise UserError(f"{path} has no optuna.db: pass RESULTS_DIR/NAME of a search") from None
    if not is_sqlite:
        raise UserError(f"{db} is not an SQLite database")
    try:
        name = json.loads((path / "search.json").read_text())["name"]
    except (OSError, ValueError, KeyError, TypeError):
        name = path.name
    return db, name


def make_dashboard(path: str | Path, port: int = 0) -> tuple[WSGIServer, str]:
    """A server (not yet serving) of the search's study on 127.0.0.1:`port` (0: a free one), and the study's URL."""
    import optuna

    db, name = study_of(path)
    storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        names = [s.study_name for s in storage.get_all_studies()]
        raise UserError(f"{db} holds no study {name!r} (it holds {', '.join(names) or 'none'})") from None
    try:
        import optuna_dashboard
    except ImportError:
        raise UserError(f"optuna-dashboard is not installed: {INSTALL}") from None
    try:
        server = make_server(HOST, port, optuna_dashboard.wsgi(storage), server_class=_Server, handler_class=_QuietHandler)
    except OSError as e:
        raise UserError(f"cannot listen on {HOST}:{port} ({e.strerror}): pick another --port or leave it out") from None
    return server, f"http://{HOST}:{server.server_port}/dashboard/studies/{study_id}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tune.dashboard", description=" ".join(__doc__.split()))
    p.add_argument("path", help="RESULTS_DIR/NAME of a search")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 (a free port) and 65535, got {args.port}")
    server, url = make_dashboard(args.path, args.port)
    print(f"Optuna dashboard of {args.path}: {url}  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    from nanogpt.cli import run_main

    run_main(main)
