"""Hugging Face GPT-2 interop (hf.py, train.py/sample.py --init_from): offline, tiny random models.

    python -m pytest tests/test_hf.py -q

A random `transformers.GPT2LMHeadModel` (nothing downloaded) is saved in the hub layout, loaded into
our GPT and compared logit by logit; our checkpoints are exported and loaded back by transformers
with the same check, and greedy generation must agree token for token. The end-to-end test
finetunes from a local GPT-2 folder through train.py and samples from the result. Tests that need
transformers are skipped, with the reason printed, where it is not installed; the error-message
tests run everywhere.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TIKTOKEN_CACHE, model_switches, records, run_script, switch_id, write_char_dataset
from model import GPT, GPTConfig
from smallgpt.checkpoint import build_checkpoint, save_checkpoint
from smallgpt.errors import UserError
from smallgpt.interop import hf

MAX_ABS_DIFF = 1e-5


def need_transformers():
    return pytest.importorskip("transformers", reason="transformers is not installed (pip install -e \".[hf]\")")


def tiny_hf_model(vocab_size=100, n_positions=64, seed=0):
    """A random GPT2LMHeadModel, weights jittered so biases and norm gains are not 0 and 1."""
    transformers = need_transformers()
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab_size,
                                     n_positions=n_positions, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # tied lm_head/wte appear once
            p.add_(0.05 * torch.randn_like(p))
    return model


def save_hf_folder(model, folder: Path, variant: str) -> Path:
    """Write the hub layout: save_pretrained (safetensors), or OpenAI's old pytorch_model.bin form."""
    if variant == "safetensors":
        model.save_pretrained(folder)
        assert (folder / "model.safetensors").is_file()
    else:  # keys without "transformer.", plus the causal-mask buffers OpenAI's .bin files carry
        folder.mkdir(parents=True)
        model.config.to_json_file(folder / "config.json")
        n = model.config.n_positions
        state = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
        for i in range(model.config.n_layer):
            state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
            state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        torch.save(state, folder / "pytorch_model.bin")
    return folder


def our_logits(model: GPT, idx):
    return model(idx, targets=idx)[0]  # with targets: logits at every position


def random_ours(config: GPTConfig, seed=0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def save_our_checkpoint(model: GPT, run_dir: Path, tokenizer="byte") -> Path:
    meta = {"tokenizer": tokenizer, "vocab_size": model.config.vocab_size}
    save_checkpoint(build_checkpoint(model, meta=meta), run_dir / "ckpt.pt")
    return run_dir


# ----------------------------------------------------------------------------- weights in

@pytest.mark.parametrize("variant", ["safetensors", "bin"])
def test_load_hf_folder_matches_transformers_logits(tmp_path, variant):
    hf_model = tiny_hf_model()
    folder = save_hf_folder(hf_model, tmp_path / "hf", variant)
    ours = hf.load_pretrained(str(folder)).eval()
    assert ours.config.vocab_size == 100 and ours.config.block_size == 64 and ours.config.n_layer == 2
    idx = torch.randint(0, 100, (3, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (our_logits(ours, idx) - hf_model(idx).logits).abs().max().item()
    assert diff < MAX_ABS_DIFF, f"logits differ by {diff}"


def test_load_refuses_mismatched_weights(tmp_path):
    hf_model = tiny_hf_model()
    folder = save_hf_folder(hf_model, tmp_path / "hf", "safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["n_layer"] = 1  # the weights have two layers
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="unexpected tensors"):
        hf.load_pretrained(str(folder))


# ----------------------------------------------------------------------------- weights out

@pytest.mark.slow
def test_exported_char_run_keeps_its_vocabulary_for_sample_eval_and_train(tmp_path, small_char_dataset):
    """A folder `hf.py export` wrote from a char run samples, scores and finetunes with that run's
    vocabulary (its smallgpt_meta.json), exactly as the run folder itself does, not as GPT-2 BPE."""
    pytest.importorskip("safetensors", reason="safetensors is not installed (.[hf])")
    meta = json.loads((small_char_dataset / "meta.json").read_text())
    ours = random_ours(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=meta["vocab_size"], block_size=32))
    run_dir = tmp_path / "run"
    save_checkpoint(build_checkpoint(ours, meta=meta), run_dir / "ckpt.pt")
    folder = hf.export_checkpoint(str(run_dir), str(tmp_path / "export"))
    assert hf.pretrained_meta(str(folder)) == meta
    assert hf.pretrained_meta("gpt2") == {"tokenizer": "gpt2"}

    sample_args = ["--start=ROMEO:", "--max_new_tokens=40", "--seed=3", "--device=cpu"]
    from_run = run_script("sample.py", f"--out_dir={run_dir}", *sample_args)
    from_folder = run_script("sample.py", f"--init_from={folder}", *sample_args)
    assert from_run.returncode == 0 and from_folder.returncode == 0, from_folder.stderr
    assert from_folder.stdout == from_run.stdout and from_run.stdout.startswith("ROMEO:")

    text = tmp_path / "text.txt"
    text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    scores = [json.loads(run_script("eval.py", source, f"--input={text}", "--json", "--device=cpu").stdout)
              for source in (f"--out_dir={run_dir}", f"--init_from={folder}")]
    assert scores[1]["tokens"] == scores[0]["tokens"] == len(text.read_text()) - 1
    assert scores[1]["total_nats"] == pytest.approx(scores[0]["total_nats"], rel=1e-5)

    trained = run_script("train.py", f"--init_from={folder}", f"--dataset={small_char_dataset}",
                         f"--out_dir={tmp_path / 'finetune'}", "--device=cpu", "--dtype=float32", "--max_iters=2",
                         "--eval_interval=2", "--eval_iters=1", "--batch_size=2", "--compile=false")
    assert trained.returncode == 0, trained.stderr
    write_char_dataset(tmp_path / "other", "abcdefghij" * 200)
    refused = run_script("train.py", f"--init_from={folder}", f"--dataset={tmp_path / 'other'}",
                         f"--out_dir={tmp_path / 'refused'}", "--device=cpu")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "was trained on the char tokenizer" in refused.stderr


@pytest.mark.parametrize("bias", [True, False])
def test_export_loads_in_transformers_with_same_logits_and_greedy_tokens(tmp_path, bias):
    transformers = need_transformers()
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=100, block_size=64, bias=bias)
    ours = random_ours(config)
    run_dir = save_our_checkpoint(ours, tmp_path / "run")
    out = hf.export_checkpoint(str(run_dir), str(tmp_path / "export"))
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    idx = torch.randint(0, 100, (3, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (our_logits(ours, idx) - hf_model(idx).logits).abs().max().item()
    assert diff < MAX_ABS_DIFF, f"logits differ by {diff}"

    prompt = idx[:, :8]
    ours_tokens = ours.generate(prompt, max_new_tokens=24, temperature=0)
    hf_tokens = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                  max_new_tokens=24, min_new_tokens=24, pad_token_id=0)
    assert torch.equal(ours_tokens, hf_tokens)

    # and back in: the exported folder loads into our GPT unchanged
    again = hf.load_pretrained(str(out)).eval()
    with torch.no_grad():
        assert (our_logits(again, idx) - our_logits(ours, idx)).abs().max().item() < MAX_ABS_DIFF


@pytest.mark.parametrize("switch", model_switches(), ids=switch_id)
def test_every_switch_exports_with_the_same_logits_or_is_refused_by_name(tmp_path, switch):
    """Each switch of GPTConfig (enumerated from its fields): the export loads in transformers and gives
    our logits, or it is refused with one line naming the option, before anything is written."""
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, block_size=16, **switch)
    ours = random_ours(config)
    run_dir = save_our_checkpoint(ours, tmp_path / "run")
    (option, value), = switch.items()
    if hf.exportable_problem(config) is not None:
        with pytest.raises(UserError, match=f"{option}="):  # checked before the optional packages are needed
            hf.export_checkpoint(str(run_dir), str(tmp_path / "export"))
        assert not (tmp_path / "export").exists()
        return
    transformers = need_transformers()
    out = hf.export_checkpoint(str(run_dir), str(tmp_path / "export"))
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (our_logits(ours.eval(), idx) - hf_model(idx).logits).abs().max().item()
    assert diff < MAX_ABS_DIFF, f"{option}={value!r}: logits differ by {diff}"


def test_export_refuses_a_parameter_gpt2_has_no_place_for(tmp_path):
    """A switch that adds parameters and is not taught to the export is refused by name, not dropped."""
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, block_size=16))
    model.transformer.h[0].register_parameter("resid_gain", torch.nn.Parameter(torch.ones(16)))
    with pytest.raises(UserError, match=r"no place for transformer\.h\.0\.resid_gain"):
        hf.state_dict_to_hf(model)


@pytest.mark.slow
def test_export_cli_one_line_error_for_rope(tmp_path):
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, block_size=16, pos_embedding="rope")
    run_dir = save_our_checkpoint(GPT(config), tmp_path / "run")
    result = run_script("-m smallgpt.interop.hf", "export", f"--out_dir={run_dir}", f"--to={tmp_path / 'export'}")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pos_embedding='rope'" in lines[0], result.stderr


def test_export_refuses_to_overwrite_unless_asked(tmp_path):
    pytest.importorskip("safetensors", reason="safetensors is not installed (pip install -e \".[hf]\")")
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, block_size=16)
    run_dir = save_our_checkpoint(GPT(config), tmp_path / "run")
    target = tmp_path / "export"
    target.mkdir()  # an empty folder is fine
    hf.export_checkpoint(str(run_dir), str(target))
    first = (target / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="--overwrite"):
        hf.export_checkpoint(str(run_dir), str(target))
    assert (target / "model.safetensors").read_bytes() == first
    (target / "extra.txt").write_text("old")
    hf.export_checkpoint(str(run_dir), str(target), overwrite=True)
    assert not (target / "extra.txt").exists() and (target / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "run"]  # no temporary folders left


def test_gpt2_tokenizer_files_encode_like_tiktoken(tmp_path, shakespeare_text, monkeypatch):
    transformers = need_transformers()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
    files = hf.gpt2_tokenizer_files(model_max_length=1024)
    assert files is not None, f"no r50k_base ranks in {TIKTOKEN_CACHE}"
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    from smallgpt.tokenizer import build_tokenizer
    ours = build_tokenizer("gpt2")
    samples = [shakespeare_text[:20_000], "  héllo wörld\t\n\n 12345 ﬁ 🙂 日本語 <|endoftext|>", "\x00\x7f\u00ad"]
    for text in samples:
        ids = ours.encode(text)
        # split_special_tokens: like ours, HF then reads "<|endoftext|>" in text as ordinary characters
        assert theirs(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == ids
        assert theirs.decode(ids) == text
    assert theirs.eos_token_id == 50256 and len(theirs) == 50257


# ----------------------------------------------------------------------------- missing packages

def test_missing_package_says_how_to_install(tmp_path, monkeypatch):
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, block_size=16)
    run_dir = save_our_checkpoint(GPT(config), tmp_path / "run")
    for name in ("safetensors", "safetensors.torch", "huggingface_hub"):
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    with pytest.raises(UserError, match=r'pip install -e "\.\[hf\]"') as err:
        hf.export_checkpoint(str(run_dir), str(tmp_path / "export"))
    assert "safetensors" in str(err.value)
    with pytest.raises(UserError, match=r'pip install -e "\.\[hf\]"'):
        hf.load_pretrained("gpt2")


# ----------------------------------------------------------------------------- train.py / sample.py

@pytest.fixture(scope="session")
def gpt2_dataset(tmp_path_factory, shakespeare_text) -> Path:
    """The first 60k characters of Shakespeare in GPT-2 BPE, in the prepare scripts' format."""
    import os
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
    from smallgpt.tokenizer import build_tokenizer
    ids = np.array(build_tokenizer("gpt2").encode(shakespeare_text[:60_000]), dtype=np.uint16)
    out = tmp_path_factory.mktemp("shakespeare_gpt2")
    n_train = int(len(ids) * 0.9)
    ids[:n_train].tofile(out / "train.bin")
    ids[n_train:].tofile(out / "val.bin")
    meta = {"format_version": 1, "tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16",
            "train_tokens": n_train, "val_tokens": len(ids) - n_train, "eot_token": 50256,
            "documents": {"train": 1, "val": 1}, "source": "test"}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


@pytest.mark.slow
def test_offline_hub_name_fails_fast_with_one_line(tmp_path, gpt2_dataset):
    pytest.importorskip("huggingface_hub", reason="huggingface_hub is not installed (pip install -e \".[hf]\")")
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_hf_home")}
    result = run_script("train.py", "config/finetune_shakespeare.toml", f"--dataset={gpt2_dataset}",
                        f"--out_dir={tmp_path / 'out'}", "--device=cpu", env=env, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "could not fetch the gpt2 weights" in lines[0] and "init_from=PATH" in lines[0]


@pytest.mark.slow
def test_pretrained_needs_a_gpt2_dataset(tmp_path, small_char_dataset):
    folder = save_hf_folder(tiny_hf_model(), tmp_path / "hf", "safetensors")
    result = run_script("train.py", f"--init_from={folder}", f"--dataset={small_char_dataset}",
                        f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--block_size=16")
    assert result.returncode == 1
    assert "GPT-2 BPE" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_finetune_from_local_gpt2_folder_end_to_end(tmp_path, gpt2_dataset):
    transformers = need_transformers()
    # GPT-2's full vocabulary, but 2 layers x 32 wide: 1.6M parameters, nearly all embedding
    folder = save_hf_folder(tiny_hf_model(vocab_size=50257, n_positions=64), tmp_path / "hf", "safetensors")
    out_dir = tmp_path / "ft"
    common = [f"--dataset={gpt2_dataset}", f"--out_dir={out_dir}", "--device=cpu", "--compile=false",
              "--block_size=16", "--batch_size=4", "--gradient_accumulation_steps=1", "--eval_iters=2",
              "--learning_rate=1e-2", "--log_interval=4"]
    result = run_script("train.py", "config/finetune_shakespeare.toml", f"--init_from={folder}",
                        "--max_iters=12", "--eval_interval=12", "--dropout=0.1", *common)
    assert result.returncode == 0, result.stderr
    assert "model shape from the pretrained config (n_layer=2, n_head=2, n_embd=32" in result.stdout
    evals = records(out_dir)
    assert [e["iter"] for e in evals] == [0, 12]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5, evals
    saved = json.loads((out_dir / "config.json").read_text())
    assert (saved["model"]["n_layer"], saved["model"]["n_embd"], saved["model"]["dropout"]) == (2, 32, 0.1)

    # resume keeps the pretrained shape although the config's keys say 12 layers
    result = run_script("train.py", "config/finetune_shakespeare.toml", "--init_from=resume",
                        "--max_iters=14", "--eval_interval=14", "--dropout=0.1", *common)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout and "step 14:" in result.stdout

    for source in (f"--out_dir={out_dir}", f"--init_from={folder}"):
        result = run_script("sample.py", source, "--start=ROMEO:", "--max_new_tokens=8", "--device=cpu",
                            "--num_samples=2")
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("ROMEO:") == 2

    # the finetuned run exports back to the hub layout with the same logits
    exported = hf.export_checkpoint(str(out_dir), str(tmp_path / "export"))
    assert json.loads((exported / "config.json").read_text())["eos_token_id"] == 50256
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(exported).eval()
    ours = hf.load_pretrained(str(exported)).eval()
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (our_logits(ours, idx) - hf_model(idx).logits).abs().max().item() < MAX_ABS_DIFF
