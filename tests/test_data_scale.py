"""Data at any scale: streaming tokenization gives today's tokens exactly, the cache, bad input,
and tokens that reach another node's trial through Ray's object store without copies."""

import json
import logging
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import RAY, free_port, stop_processes_under
from nanogpt import textfile, token_cache
from nanogpt import tokenizer as T
from nanogpt.batches import get_batch
from nanogpt.dataset import load_dataset, split_text
from nanogpt.errors import DataError
from nanogpt.textfile import read_chunks
from nanogpt.token_cache import prepare
from nanogpt.tokenizer import BPETokenizer, CharTokenizer

# every kind of character the cut points must survive: multi-byte UTF-8 (2, 3, 4 bytes), line ends
# that str.splitlines knows ("\r\n", "\r", "\u2028", "\x1c"), whitespace runs, contractions, "<unk>"
TRICKY = ("Caf\u00e9 na\u00efve \u20ac5 \U0001d11e clef\r\nit's   spaced\tout\n\n    indented line\n"
          "x\u2028y\x1cz \u00a0nbsp 12.5e3 don't <unk> literal\rold mac line\n" "\u4e2d\u6587 text\n")


def _corpus(n_lines: int = 300, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "mat", "it's", "we'll", "def", "x", "=", "1234", "(a,", "b)", "  ", "\t",
             "caf\u00e9", "\u20ac", "\U0001d11e", "<unk>", "\u00a0", "na\u00efve", "#", ":"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) for _ in range(n_lines)]
    ends = ["\n", "\n", "\n", "\r\n", "\n\n", "\n    "]
    return TRICKY + "".join(line + rng.choice(ends) for line in lines)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_TUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 7 bytes and BPE pieces of 5 characters: every kind of cut is made many times."""
    monkeypatch.setattr(textfile, "CHUNK_BYTES", 7)
    monkeypatch.setattr(T, "_PIECE_CHARS", 5)


def _legacy(name, data_file, kind, vocab=300):
    """Today's encoding: the whole text as one string, one encode call per split."""
    ds = load_dataset(name, data_file)
    tok = CharTokenizer.from_text(ds.text) if kind == "char" else BPETokenizer.train(ds.text, vocab)
    return tok, tok.encode(ds.train_text), tok.encode(ds.val_text), len(ds.val_text) / max(1, len(tok.encode(ds.val_text)))


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_prepare_gives_todays_tokens_for_a_file(tmp_path, cache, small_chunks, kind):
    f = tmp_path / "corpus.txt"
    f.write_text(_corpus(), encoding="utf-8", newline="")
    data, tok = prepare(None, f, kind, 300)
    ltok, train, val, cpt = _legacy(None, f, kind)
    assert tok.to_dict() == ltok.to_dict()
    assert data.train.tolist() == train and data.val.tolist() == val
    assert data.val_chars_per_token == cpt and data.dataset == "corpus.txt" and not data.from_cache
    assert data.train.dtype == np.uint16 and not data.train.flags.writeable and not data.val.flags.writeable


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_prepare_gives_todays_tokens_for_builtin_corpora(cache, kind):
    for name in ("mixed", "abc"):
        data, tok = prepare(name, None, kind, 300)
        ltok, train, val, cpt = _legacy(name, None, kind)
        assert tok.to_dict() == ltok.to_dict() and data.train.tolist() == train and data.val.tolist() == val
        assert data.val_chars_per_token == cpt


def test_stream_encoders_match_encode_with_unk(small_chunks):
    """Any chunking gives encode's ids: characters never seen are <unk> (id 0); BPE pieces cut anywhere
    the pre-tokenizer splits anyway, "<unk>" kept whole."""
    text = _corpus(200, seed=1)
    char = CharTokenizer.from_text("abc \n")  # most of text is unseen: <unk>
    bpe = BPETokenizer.train(_corpus(200, seed=2), 320)
    for tok in (char, bpe):
        for size in (1, 3, 64, len(text)):
            enc = tok.stream_encoder()
            ids = np.concatenate([enc.feed(text[i : i + size]) for i in range(0, len(text), size)] + [enc.finish()])
            assert ids.tolist() == tok.encode(text), (tok.kind, size)
    assert 0 in char.encode_array(text) and bpe.encode("<unk>") == [0]


def test_ascii_words_are_the_library_pre_tokenizer():
    """The fast path's regex splits ASCII exactly as the library's byte-level pre-tokenizer does."""
    tok = BPETokenizer.train("the cat sat on the mat. it's 42!\n" * 20, 300)
    rng = random.Random(0)
    alphabet = [chr(i) for i in range(128)] + list(" \n\t\r\x0b\x0c'sdtrevlmA0.") * 4
    for _ in range(3000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 16)))
        if "<unk>" in s:
            continue
        assert tok._words.encode(s).tolist() == tok.encode(s), repr(s)


def test_multibyte_character_cut_by_a_chunk_boundary(tmp_path, cache, monkeypatch):
    text = "ab\u00e9\u20ac\U0001d11e" * 40
    f = tmp_path / "mb.txt"
    f.write_text(text, encoding="utf-8")
    for chunk in (1, 2, 3, 5, 6):  # cuts inside 2-, 3- and 4-byte characters
        monkeypatch.setattr(textfile, "CHUNK_BYTES", chunk)
        assert "".join(t for _, t in read_chunks(f)) == text
    data, tok = prepare(None, f, "char")
    train, val = split_text(text)
    assert data.train.tolist() == tok.encode(train) and data.val.tolist() == tok.encode(val)


def test_uint32_beyond_65535_tokens(cache):
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c < 0xE000]
    tok = CharTokenizer(chars)
    ids = tok.encode_array("".join(chars[-3:]) + "\u00e9")
    assert ids.dtype == np.uint32 and ids.tolist() == tok.encode("".join(chars[-3:]) + "\u00e9")


def test_cache_reused_and_invalidated_by_a_changed_file(tmp_path, cache):
    f = tmp_path / "c.txt"
    f.write_text("hello world, hello tokens\n" * 40)
    first, _ = prepare(None, f, "char")
    again, _ = prepare(None, f, "char")
    assert not first.from_cache and again.from_cache and np.array_equal(first.train, again.train)
    assert "used the cache" in again.describe()
    os.utime(f)  # touched, same text: hashed again, still a hit
    assert prepare(None, f, "char")[0].from_cache
    st = f.stat()
    f.write_text("HELLO WORLD, hello tokens\n" * 40)  # same size, and the old mtime put back
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed, tok = prepare(None, f, "char")
    assert not changed.from_cache
    assert changed.train.tolist() == tok.encode(f.read_text()[: len(changed.train)]) != first.train.tolist()
    bpe, _ = prepare(None, f, "bpe", 300)  # other tokenizer settings: their own entry
    assert not bpe.from_cache


def test_given_tokenizer_is_used_as_is(tmp_path, cache):
    """On resume a checkpoint's tokenizer encodes the data; characters it lacks are <unk>."""
    f = tmp_path / "r.txt"
    f.write_text("abcabc xyz\n" * 20)
    tok = CharTokenizer.from_text("abc")
    data, got = prepare(None, f, tok)
    assert got.to_dict() == tok.to_dict() and 0 in data.train
    assert data.train.tolist() == tok.encode(split_text(f.read_text())[0])


def test_two_processes_prepare_at_once(tmp_path, cache):
    f = tmp_path / "p.txt"
    f.write_text(_corpus(2000))
    script = ("import sys, json; from nanogpt.token_cache import prepare; d, t = prepare(None, sys.argv[1], 'bpe', 300); "
              "print(json.dumps([d.from_cache, int(d.train.astype('int64').sum()), len(d.val)]))")
    env = {**os.environ, "NANOGPT_TUNE_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(f)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert sorted(o[0] for o in outs) == [False, True]  # one tokenized, the other waited and read it
    assert outs[0][1:] == outs[1][1:]
    assert not list((cache / "tokens").glob(".*.tmp"))


def test_unwritable_cache_falls_back_to_a_temp_dir(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("NANOGPT_TUNE_CACHE", str(blocker / "cache"))  # under a file: cannot be made
    monkeypatch.setattr(token_cache, "_FALLBACK_ROOT", token_cache._FallbackRoot())
    f = tmp_path / "u.txt"
    f.write_text("some text to tokenize\n" * 10)
    with caplog.at_level(logging.WARNING, logger="nanogpt.token_cache"):
        data, _ = prepare(None, f, "char")
    assert len(data.train) > 0 and "NANOGPT_TUNE_CACHE" in caplog.text
    monkeypatch.setattr(token_cache.tempfile, "mkdtemp", lambda **_: (_ for _ in ()).throw(OSError("no space")))
    monkeypatch.setattr(token_cache, "_FALLBACK_ROOT", token_cache._FallbackRoot())
    with pytest.raises(DataError, match="NANOGPT_TUNE_CACHE"):
        prepare(None, f, "char")


def test_bad_files_are_one_clear_error(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(textfile, "CHUNK_BYTES", 1000)  # the faults lie in later chunks
    cases = {
        "missing.txt": (None, "does not exist"),
        "empty.txt": (b" \n\t\n" * 600, "empty"),
        "nul.txt": (b"abc\n" * 1000 + b"\x00", "NUL bytes, the first at byte 4000"),
        "latin1.txt": (b"abc\n" * 1000 + b"caf\xe9", "invalid byte 0xe9 at byte 4003 (line 1001)"),
        "cut.txt": (b"abc\n" * 1000 + "\u20ac".encode()[:2], "at byte 4000 (line 1001)"),
    }
    for name, (content, needle) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError) as e:
            prepare(None, tmp_path / name, "char")
        assert needle in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
    (tmp_path / "ok.txt").write_text("x" * 100)
    for args, needle in [(("nope", None), "unknown dataset"), (("counting", tmp_path / "ok.txt"), "not both")]:
        with pytest.raises(DataError, match=needle):
            prepare(*args)
    with pytest.raises(DataError, match="bpe-vocab-size"):
        prepare(None, tmp_path / "ok.txt", "bpe", 100)
    with pytest.raises(DataError, match="too short"):
        prepare(None, tmp_path / "ok.txt", "char")[0].check_block_size(64)


def test_progress_only_for_big_inputs(tmp_path, cache, monkeypatch, caplog):
    f = tmp_path / "g.txt"
    f.write_text("a line of text\n" * 5000)
    with caplog.at_level(logging.INFO, logger="nanogpt"):
        prepare(None, f, "char")
    assert not caplog.records  # small: nothing on the terminal
    monkeypatch.setattr(textfile, "PROGRESS_MIN_BYTES", 1000)
    f.write_text("another line\n" * 5000)
    with caplog.at_level(logging.INFO, logger="nanogpt"):
        prepare(None, f, "char")
    assert any("tokenizing g.txt" in r.getMessage() and "MB/s" in r.getMessage() for r in caplog.records)


def test_trainer_reads_prepared_tokens(cache):
    """The trainer batches read-only uint16 tokens: same windows as today's int64 tensors."""
    data, tok = prepare("counting", None, "char")
    old = torch.tensor(tok.encode(load_dataset("counting").train_text), dtype=torch.long)
    for gen_seed in (0, 1):
        x, y = get_batch(data.train, 16, 4, torch.Generator().manual_seed(gen_seed))
        x0, y0 = get_batch(old, 16, 4, torch.Generator().manual_seed(gen_seed))
        assert torch.equal(x, x0) and torch.equal(y, y0)


# --- a two-node cluster on this machine ---------------------------------------------------

@pytest.fixture
def two_nodes():
    """A head and a worker node (custom resource `worker_node`), both here, token authentication on."""
    port = free_port()
    temp = Path(f"/tmp/ngt-ds-{os.getpid()}")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    try:
        head = subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
                               "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert head.returncode == 0, head.stdout + head.stderr
        worker = subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                                 "--num-cpus=1", '--resources={"worker_node": 1}'],
                                env=env, capture_output=True, text=True, timeout=120)
        assert worker.returncode == 0, worker.stdout + worker.stderr
        yield f"127.0.0.1:{port}", env
    finally:
        stop_processes_under(temp)


# The driver: prepare, put the TokenData once, read it in a task on the other node.
DRIVER = textwrap.dedent("""
    import json, sys
    import numpy as np, ray
    from nanogpt.token_cache import prepare

    data, tok = prepare("mixed", None, "char")
    ray.init(address=sys.argv[1], logging_level="ERROR")
    ref = ray.put(data)

    @ray.remote(num_cpus=0, resources={"worker_node": 1})
    def read(d):
        import os
        addr = d.train.__array_interface__["data"][0]
        mapping = ""
        for line in open("/proc/self/maps"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                mapping = line.split(None, 5)  # address, perms, offset, dev, inode, path
        return {"node": ray.get_runtime_context().get_node_id(), "dtype": str(d.train.dtype),
                "writeable": bool(d.train.flags.writeable), "owndata": bool(d.train.flags.owndata),
                "perms": mapping[1] if mapping else "", "path": mapping[5].strip() if len(mapping) > 5 else "",
                "sum": int(d.train.astype(np.int64).sum()), "n_val": len(d.val), "dataset": d.dataset}

    got = ray.get(read.remote(ref))
    got["driver_node"] = ray.get_runtime_context().get_node_id()
    got["expected_sum"] = int(data.train.astype(np.int64).sum())
    print(json.dumps(got))
""")


@pytest.mark.slow
def test_tokens_reach_another_node_read_only_and_zero_copy(tmp_path, two_nodes):
    address, env = two_nodes
    proc = subprocess.run([sys.executable, "-c", DRIVER, address], capture_output=True, text=True, timeout=180,
                          env={**env, "NANOGPT_TUNE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["node"] != got["driver_node"]  # the task ran on the worker node
    assert got["dtype"] == "uint16" and got["sum"] == got["expected_sum"] and got["dataset"] == "mixed"
    # zero-copy: a read-only view into the node's shared-memory object store, not a private copy
    assert not got["writeable"] and not got["owndata"]
    assert "s" in got["perms"] and "plasma" in got["path"], got
