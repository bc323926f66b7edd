"""Export: a checkpoint loads in Hugging Face transformers and in nanoGPT's own code, and generates what ours does."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, assert_one_line_error, run_cli
from nanogpt.checkpoint import load_model
from nanogpt.batches import tokenize
from nanogpt.dataset import load_dataset
from nanogpt.errors import UserError
from nanogpt.export import export
from nanogpt.model import GPT, GPTConfig
from nanogpt.sample import generate_text
from nanogpt.tokenizer import BPETokenizer, CharTokenizer
from nanogpt.train import TrainConfig, Trainer

# nanoGPT's own code, where the project's anchors lie (not part of a clone: the test that runs it skips without it)
ANCHOR = Path(os.environ.get("NANOGPT_ANCHOR", REPO.parent / "shared" / "anchors" / "nanoGPT"))
PROMPTS = ["Number 7 comes before", "A3B3"]
NANOGPT_PROMPTS = ["Number 7 comes before", "Number 41"]  # nanoGPT's encode knows only the corpus's characters
TEXT = "Number 12 comes before 13. A5B5C5 \u00d6\n"  # \u00d6: a character the corpus lacks


def _train(out: Path, kind: str, bias: bool) -> Path:
    ds = load_dataset("counting")
    tok = CharTokenizer.from_text(ds.text) if kind == "char" else BPETokenizer.train(ds.text, 300)
    cfg = GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=16, bias=bias)
    t = Trainer(cfg, TrainConfig(max_steps=60, batch_size=8, learning_rate=1e-2, eval_interval=30, eval_iters=2,
                                 device="cpu"), tokenize(ds, tok), tok)
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
