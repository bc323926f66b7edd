"""Export: a checkpoint loads in Hugging Face transformers and in nanoGPT's own code, and generates what ours does."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, assert_one_line_error, make_trainer, run_cli
from nanogpt.checkpoint import load_model
from nanogpt.batches import tokenize
from nanogpt.dataset import load_dataset
from nanogpt.errors import UserError
from nanogpt.export import export
from nanogpt.model import GPT, GPTConfig
from nanogpt.sample import generate_text
from nanogpt.tokenizer import BPETokenizer, CharTokenizer

# nanoGPT's own code, where the project's anchors lie (not part of a clone: the test that runs it skips without it)
ANCHOR = Path(os.environ.get("NANOGPT_ANCHOR", REPO.parent / "shared" / "anchors" / "nanoGPT"))
PROMPTS = ["Number 7 comes before", "A3B3"]
NANOGPT_PROMPTS = ["Number 7 comes before", "Number 41"]  # nanoGPT's encode knows only the corpus's characters
TEXT = "Number 12 comes before 13. A5B5C5 \u00d6\n"  # \u00d6: a character the corpus lacks


def _train(out: Path, kind: str, bias: bool) -> Path:
    ds = load_dataset("counting")
    tok = CharTokenizer.from_text(ds.text) if kind == "char" else BPETokenizer.train(ds.text, 300)
    t = make_trainer((tokenize(ds, tok), tok), block_size=32, n_layer=2, bias=bias, base={}, max_steps=60,
                     batch_size=8, learning_rate=1e-2, eval_interval=30, eval_iters=2, device="cpu")
    t.run()
    return t.save(out)


@pytest.fixture(scope="module", params=[("char", False), ("char", True), ("bpe", True)], ids=["char-nobias", "char", "bpe"])
def exported(request, tmp_path_factory):
    kind, bias = request.param
    root = tmp_path_factory.mktemp(f"export-{kind}-{bias}")
    ckpt = _train(root / "ckpt", kind, bias)
    return ckpt, export(ckpt, root / "hf", "hf")


def test_hf_logits_equal_ours(exported):
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel

    ckpt, out = exported
    ours, tok, _ = load_model(ckpt)
    hf, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert isinstance(hf, GPT2LMHeadModel)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied again
    ids = tok.encode(TEXT * 4)
    x = torch.tensor([ids[:30], ids[3:33], ids[7:37]])
    with torch.no_grad():
        a, _ = ours(x, x)  # with targets: logits at every position
        b = hf(x).logits
    assert (a - b).abs().max().item() < 1e-5


def test_hf_tokenizer_same_ids_and_text(exported):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    ckpt, out = exported
    _, tok, _ = load_model(ckpt)
    lib = Tokenizer.from_file(str(out / "tokenizer.json"))  # the `tokenizers` library alone
    auto = AutoTokenizer.from_pretrained(out)
    ids = tok.encode(TEXT)
    assert lib.encode(TEXT).ids == ids
    assert auto(TEXT)["input_ids"] == ids
    assert auto.decode(ids) == lib.decode(ids, skip_special_tokens=False) == tok.decode(ids)
    if tok.kind == "char":
        assert lib.token_to_id("<unk>") == 0 and lib.get_vocab() == {s: i for i, s in enumerate(tok.itos)}


def test_hf_pipeline_greedy_equals_nanogpt_sample(exported):
    from transformers import pipeline

    ckpt, out = exported
    ours, tok, _ = load_model(ckpt)
    generate = pipeline("text-generation", model=str(out), device="cpu")
    for prompt in PROMPTS:
        theirs = generate(prompt, max_new_tokens=10, do_sample=False)[0]["generated_text"]
        assert theirs == generate_text(ours, tok, prompt, max_new_tokens=10, temperature=0)


def test_hf_model_card(exported):
    ckpt, out = exported
    card = (out / "README.md").read_text()
    for needle in ("counting", "60 steps", "Validation loss", "python -m nanogpt.export", "library_name: transformers"):
        assert needle in card


# --- nanoGPT ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nanogpt_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-nanogpt")
    ckpt = _train(root / "ckpt", "char", True)
    proc = run_cli("nanogpt.export", str(ckpt), str(root / "ng"), "--format", "nanogpt")
    assert proc.returncode == 0, proc.stderr
    return ckpt, root / "ng", proc


def test_nanogpt_format_loads_with_sample_py_code(nanogpt_export):
    """nanoGPT's sample.py loading code, line for line (model from our nanoGPT-compatible GPT; meta.pkl read
    directly instead of from data/DATASET/), then its generate with top_k=1: greedy."""
    ckpt, out, _ = nanogpt_export
    checkpoint = torch.load(os.path.join(out, "ckpt.pt"), map_location="cpu", weights_only=True)
    assert {"model", "model_args", "config", "iter_num", "best_val_loss"} <= set(checkpoint)
    assert checkpoint["iter_num"] == 60 and checkpoint["config"]["dataset"] == "nanogpt_tune_counting"
    gptconf = GPTConfig(**checkpoint["model_args"])
    model = GPT(gptconf)
    state_dict = checkpoint["model"]
    unwanted_prefix = "_orig_mod."
    for k, v in list(state_dict.items()):
        if k.startswith(unwanted_prefix):
            state_dict[k[len(unwanted_prefix):]] = state_dict.pop(k)
    model.load_state_dict(state_dict)
    model.eval()
    with open(out / "meta.pkl", "rb") as f:
        meta = pickle.load(f)
    stoi, itos = meta["stoi"], meta["itos"]
    encode = lambda s: [stoi[c] for c in s]  # noqa: E731 (nanoGPT's own lines)
    decode = lambda l: "".join([itos[i] for i in l])  # noqa: E731

    ours, tok, _ = load_model(ckpt)
    for prompt in NANOGPT_PROMPTS:
        x = torch.tensor(encode(prompt), dtype=torch.long)[None, ...]
        y = model.generate(x, 12, temperature=1.0, top_k=1)
        assert decode(y[0].tolist()) == generate_text(ours, tok, prompt, max_new_tokens=12, temperature=0)


@pytest.mark.skipif(not (ANCHOR / "sample.py").is_file(), reason=f"nanoGPT's own code is not at {ANCHOR}")
def test_nanogpt_own_sample_py_runs_on_the_export(nanogpt_export, tmp_path):
    """nanoGPT's sample.py itself, unchanged, from a nanoGPT folder (tiktoken, which it imports but does not use
    once meta.pkl is found, replaced by an empty module)."""
    ckpt, out, proc = nanogpt_export
    shutil.copy(ANCHOR / "configurator.py", tmp_path)
    (tmp_path / "data" / "nanogpt_tune_counting").mkdir(parents=True)
    shutil.copy(out / "meta.pkl", tmp_path / "data" / "nanogpt_tune_counting")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "tiktoken.py").write_text("")
    assert "data/nanogpt_tune_counting" in proc.stdout  # the export says where meta.pkl goes
    prompt = NANOGPT_PROMPTS[0]
    run = subprocess.run(
        [sys.executable, str(ANCHOR / "sample.py"), f"--out_dir={out}", "--device=cpu", "--dtype=float32",
         "--num_samples=1", "--max_new_tokens=12", "--top_k=1", "--temperature=1.0", f"--start={prompt}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "fake")})
    assert run.returncode == 0, run.stderr
    assert "Loading meta from data/nanogpt_tune_counting/meta.pkl" in run.stdout
    ours, tok, _ = load_model(ckpt)
    assert generate_text(ours, tok, prompt, max_new_tokens=12, temperature=0) + "\n---------------" in run.stdout


# --- what is refused ---------------------------------------------------------------------------


def test_nanogpt_format_takes_characters_and_refuses_bpe_in_one_line(exported, tmp_path):
    ckpt, _ = exported
    if load_model(ckpt)[1].kind == "char":
        assert sorted(p.name for p in export(ckpt, tmp_path / "ng", "nanogpt").iterdir()) == ["ckpt.pt", "meta.pkl"]
        return
    proc = run_cli("nanogpt.export", str(ckpt), str(tmp_path / "ng"), "--format", "nanogpt")
    assert_one_line_error(proc, "BPE", "--format hf")
    assert not list(tmp_path.iterdir())  # nothing written


def test_export_refuses_a_nonempty_out_dir_and_a_non_checkpoint(nanogpt_export, tmp_path):
    ckpt, out, _ = nanogpt_export
    before = (out / "ckpt.pt").read_bytes()
    assert_one_line_error(run_cli("nanogpt.export", str(ckpt), str(out)), "not empty")
    assert (out / "ckpt.pt").read_bytes() == before
    assert_one_line_error(run_cli("nanogpt.export", str(tmp_path), str(tmp_path / "x")), "not a checkpoint")


# --- tune.search --export ------------------------------------------------------------------------


def test_search_refuses_nanogpt_export_of_bpe_before_anything():
    """Before Ray starts or anything is written."""
    from tune.config import build_parser, config_from_args

    args = build_parser().parse_args(["--tokenizer", "bpe", "--export", "nanogpt", "--results-dir", "/nonexistent/x"])
    with pytest.raises(UserError, match="--export hf"):
        config_from_args(args)


def test_search_refuses_nanogpt_export_of_any_tokenizer_but_characters(monkeypatch):
    """A tokenizer added to the table (here a stand-in) is refused up front too, not only BPE by name."""
    from nanogpt import tokenizer as T
    from tune.config import build_parser, config_from_args

    monkeypatch.setitem(T.TOKENIZERS, "bytes", type("ByteTokenizer", (), {"kind": "bytes"}))
    args = build_parser().parse_args(["--export", "nanogpt", "--results-dir", "/nonexistent/x"])
    args.tokenizer = "bytes"  # the flag's choices were read from the table at import
    with pytest.raises(UserError, match="cannot hold a bytes tokenizer"):
        config_from_args(args)
    args.export = "hf"  # nor to Hugging Face where the class has no conversion: refused before the search too
    with pytest.raises(UserError, match="--export hf cannot hold a bytes tokenizer: leave --export off"):
        config_from_args(args)


@pytest.mark.slow
def test_a_searchs_best_model_loads_in_transformers_and_nanogpt(tiny_search, tmp_path):
    """The tiny search's best/ (char), exported both ways: transformers' greedy text and nanoGPT's loading code
    (ckpt.pt and meta.pkl, top_k=1) give what nanogpt.sample gives at temperature 0; the model card names the
    search's command."""
    from transformers import pipeline

    src, _ = tiny_search
    ours, tok, _ = load_model(src / "best")
    prompt, want = "Number 7", generate_text(ours, tok, "Number 7", max_new_tokens=8, temperature=0)
    hf = export(src / "best", tmp_path / "hf", "hf")
    assert pipeline("text-generation", model=str(hf), device="cpu")(
        prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"] == want
    assert "the best trial of the search `python -m tune.search --dataset counting" in (hf / "README.md").read_text()
    ng = export(src / "best", tmp_path / "ng", "nanogpt")
    checkpoint = torch.load(ng / "ckpt.pt", map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    model.eval()
    with open(ng / "meta.pkl", "rb") as f:
        meta = pickle.load(f)
    y = model.generate(torch.tensor([[meta["stoi"][c] for c in prompt]]), 8, temperature=1.0, top_k=1)
    assert "".join(meta["itos"][i] for i in y[0].tolist()) == want


# --- where the export goes (issue 29) --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, data):
    """A checkpoint trained two steps: for tests of where files go and what is refused, not of what a model says."""
    t = make_trainer(data, n_embd=8, base={}, max_steps=2, batch_size=2, eval_interval=2, eval_iters=1, device="cpu")
    t.run()
    return t.save(tmp_path_factory.mktemp("tiny") / "ckpt")


def _tree(d: Path) -> dict:
    """Every path under d (links not followed) -> its bytes, its link target, or None for a directory."""
    out = {}
    for p in sorted(d.rglob("*")):
        out[str(p.relative_to(d))] = (os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None)
    return out


def test_export_into_a_symlink_to_an_empty_directory_writes_there_and_leaves_no_temporary(tiny_ckpt, tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "target")
    proc = run_cli("nanogpt.export", str(tiny_ckpt), str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "target"]
    assert (tmp_path / "out").is_symlink() and (tmp_path / "target" / "model.safetensors").is_file()


def test_export_to_a_dangling_symlink_is_one_line_and_writes_nothing(tiny_ckpt, tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    assert_one_line_error(run_cli("nanogpt.export", str(tiny_ckpt), str(tmp_path / "out")), "symbolic link", "nowhere")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and not (tmp_path / "nowhere").exists()


def test_export_leaves_an_existing_export_tmp_directory_or_link_as_it_was(tiny_ckpt, tmp_path):
    (tmp_path / "a.export-tmp").mkdir()
    (tmp_path / "a.export-tmp" / "keep.txt").write_text("someone else's")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "b.export-tmp").symlink_to(tmp_path / "elsewhere")
    before = _tree(tmp_path)
    export(tiny_ckpt, tmp_path / "a", "hf")
    export(tiny_ckpt, tmp_path / "b", "nanogpt")
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if k.split("/")[0] not in ("a", "b")} == before
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["ckpt.pt", "meta.pkl"]


def test_export_that_fails_while_writing_leaves_nothing_behind(tiny_ckpt, tmp_path, monkeypatch):
    from nanogpt import export as export_mod

    def fail(model, tokenizer, meta, out, card):
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("a bug while writing")

    monkeypatch.setattr(export_mod, "write_hf", fail)
    with pytest.raises(RuntimeError, match="a bug while writing"):
        export(tiny_ckpt, tmp_path / "new" / "out", "hf")
    assert list(tmp_path.iterdir()) == []  # neither the temporary directory nor the parent made for it


def test_search_export_replaces_a_previous_export_but_not_a_folder_of_other_files(tiny_ckpt, tmp_path):
    """tune.search --export makes best-FORMAT/ again on every run through the same writer: the previous export is
    swapped for the new one once it is whole; a directory holding anything an export does not write is refused."""
    export(tiny_ckpt, tmp_path / "best-nanogpt", "nanogpt")
    (tmp_path / "best-nanogpt" / "meta.pkl").write_bytes(b"stale")
    export(tiny_ckpt, tmp_path / "best-nanogpt", "nanogpt", replace=True)
    assert (tmp_path / "best-nanogpt" / "meta.pkl").read_bytes() != b"stale"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-nanogpt"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export(tiny_ckpt, tmp_path / "mine", "nanogpt", replace=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


# --- crafted checkpoints (issue 29) --------------------------------------------------------------------------


def _craft(ckpt: Path, dest: Path, file: str, change) -> Path:
    import json

    shutil.copytree(ckpt, dest)
    d = json.loads((dest / file).read_text())
    change(d)
    (dest / file).write_text(json.dumps(d))
    return dest


CRAFTED = {
    "int-character": ("tokenizer.json", lambda d: d["chars"].__setitem__(5, 5), "tokenizer.json"),
    "lone-surrogate": ("tokenizer.json", lambda d: d["chars"].__setitem__(5, "\ud800"), "tokenizer.json"),
    "train-a-list": ("config.json", lambda d: d.__setitem__("train", [1, 2]), "config.json"),
}
COMMANDS = {
    "export-hf": lambda ck, out: ("nanogpt.export", str(ck), str(out), "--format", "hf"),
    "export-nanogpt": lambda ck, out: ("nanogpt.export", str(ck), str(out), "--format", "nanogpt"),
    "sample": lambda ck, out: ("nanogpt.sample", "--checkpoint", str(ck), "--max-new-tokens", "20"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("crafted", CRAFTED)
def test_crafted_checkpoint_is_one_line_naming_its_file_for_export_and_sample(tiny_ckpt, tmp_path, crafted, command):
    file, change, needle = CRAFTED[crafted]
    ck = _craft(tiny_ckpt, tmp_path / "ck", file, change)
    proc = run_cli(*COMMANDS[command](ck, tmp_path / "out"))
    assert_one_line_error(proc, needle, "corrupt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


@pytest.mark.parametrize("file, change, needle", [
    ("tokenizer.json", lambda d: d.__setitem__("chars", "abc"), "list of characters"),
    ("tokenizer.json", lambda d: d["chars"].__setitem__(5, "ab"), "one Unicode character"),
    ("tokenizer.json", lambda d: d.__setitem__("kind", ["char"]), "unknown tokenizer kind"),
    ("tokenizer.json", lambda d: d.update(kind="bpe", tokenizer=[1]), "JSON object"),
    ("config.json", lambda d: d["history"].append(7), "history[1] must be an object"),
    ("config.json", lambda d: d["history"][0].__setitem__("val_loss", "low"), "history[0].val_loss must be a number"),
    ("config.json", lambda d: d["train"].__setitem__("budget", "x"), "train.budget"),
    ("config.json", lambda d: d.__setitem__("step", [3]), "step must be an integer"),
    ("config.json", lambda d: d.__setitem__("model", [3]), '"model" must be an object'),
], ids=["chars-a-string", "two-characters", "kind-a-list", "bpe-not-an-object", "history-not-objects",
        "val-loss-a-string", "budget-a-string", "step-a-list", "model-a-list"])
def test_crafted_checkpoint_is_refused_on_load_naming_its_file(tiny_ckpt, tmp_path, file, change, needle):
    from nanogpt.checkpoint import CheckpointError

    ck = _craft(tiny_ckpt, tmp_path / "ck", file, change)
    with pytest.raises(CheckpointError) as e:
        load_model(ck)
    assert file in str(e.value) and needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_export_files_take_the_users_umask(tmp_path, umask):
    """Issue 30: model.safetensors was written 0600 whatever the umask (safetensors' own mode); an export is the
    user's files, with the modes any new file of theirs gets."""
    ckpt = _train(tmp_path / "ckpt", "char", False)
    old = os.umask(umask)
    try:
        out = export(ckpt, tmp_path / "hf", "hf")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    modes = {f.name: f.stat().st_mode & 0o777 for f in out.iterdir()}
    assert modes and all(m == 0o666 & ~umask for m in modes.values()), modes
