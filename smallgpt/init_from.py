"""What `init_from` means: the config and the first weights a training run starts from.

    scratch              new weights, the model the config describes
    resume               out_dir's own run: its saved config (keys given on the command line change
                         what may change; a model-shape key may not) and its whole state
    gpt2 ... gpt2-xl     OpenAI's weights from the Hugging Face hub (hf.py), a fresh optimizer
    a folder or a .pt    another run's checkpoint (ours or nanoGPT's) or a folder in the Hugging Face
                         GPT-2 layout: its weights, a fresh optimizer

    cfg, ckpt = resumed_config(TrainConfig, given_keys, out_dir / "ckpt.pt")    # init_from=resume
    shape = pretrained_shape(cfg.init_from, cfg.dataset, given_keys, dropout)    # gpt2, a run, a folder
    model, pretrained_from = first_model(cfg, meta, ckpt)                        # every init_from
    loop_state = restore(ckpt, fields(LoopState), optimizer, scaler, sampler, procs, seed)   # resume

The model's shape comes from the pretrained weights (only block_size may be lowered), and the
dataset must give token ids the same meaning as the weights' tokenizer; a conversations dataset
(prepare/chat.py) may add the chat markers after its ids, and the model then gets rows for them
(`add_chat_markers`, one line says how).
"""

import dataclasses
from pathlib import Path

import torch

from model import GPT, GPTConfig
from smallgpt import fsdp
from smallgpt.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_weights, model_from_checkpoint, set_rng_state
from smallgpt.cli import build_config, config_from_dict
from smallgpt.distributed import print0
from smallgpt.errors import UserError
from smallgpt.runfolder import LOCK_NAME, FolderLock
from smallgpt.tokenizer import chat_markers, same_vocabulary, vocabulary_name

# Keys a resumed run may not change: they define the model its checkpoint holds.
SHAPE_KEYS = tuple(f.name for f in dataclasses.fields(GPTConfig) if f.name not in ("vocab_size", "dropout"))


def resumed_config(config_cls, given: dict, ckpt_path: Path):
    """(config, checkpoint) of the run at ckpt_path: its saved config with the keys `given` changed.

    The checkpoint is read onto the CPU (its RNG states must stay CPU tensors; the optimizer's
    load_state_dict moves its moments to the parameters' device). Changing a model-shape key is refused.
    """
    if not ckpt_path.is_file():
        holder = FolderLock(ckpt_path.parent / LOCK_NAME).holder()
        if holder is not None:
            raise UserError(f"another trainer is using {ckpt_path.parent} ({holder}) and has not saved a checkpoint "
                            f"yet; resume once it has saved or stopped, or choose another --out_dir")
        raise UserError(f"init_from=resume but there is no checkpoint at {ckpt_path}: train with "
                        f"--init_from=scratch first or point --out_dir at the run")
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    saved = config_from_dict(config_cls, ckpt.get("train_config") or {})
    try:  # the model as the checkpoint holds it (true vocabulary included)
        saved = dataclasses.replace(saved, model=GPTConfig(**ckpt["model_config"]))
    except (TypeError, ValueError) as e:
        raise UserError(f"{ckpt_path} holds a model_config this code cannot build ({e})") from None
    changed = [f"{k}: {getattr(saved.model, k)!r} -> {given[k]!r}" for k in SHAPE_KEYS
               if k in given and given[k] != getattr(saved.model, k)]
    if changed:
        raise UserError(f"cannot resume from {ckpt_path}: the model differs from the checkpoint's "
                        f"({'; '.join(changed)}); leave those keys out or start a new out_dir")
    return build_config(config_cls, given, base=saved), ckpt


def restore(ckpt: dict, loop_fields, optimizer, scaler, sampler, procs, seed: int) -> dict:
    """Load a checkpoint's training state into a freshly built run; returns the loop state's values.

    The optimizer's moments go to the parameters' device (the dict is popped: its memory goes once
    loaded); the scaler's state is loaded when float16 uses one; each process continues its own RNG
    stream when the run saved as many processes as this one has (else fresh streams, seeded by rank and
    iteration); the train sampler continues from its saved position. `loop_fields`: train.LoopState's
    fields; one an older checkpoint lacks keeps its default.
    """
    optimizer.load_state_dict(fsdp.shard_like_params(optimizer, ckpt.pop("optimizer")))  # FSDP: this rank's shards
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    values = {f.name: ckpt[f.name] for f in loop_fields if f.name in ckpt}
    if values.get("sampler"):
        sampler.load_state_dict(values["sampler"])
    rngs = ckpt.get("rng_per_rank") or []
    if len(rngs) == procs.world_size:
        set_rng_state(rngs[procs.rank], procs.device)
    else:
        torch.manual_seed(seed + procs.rank + values.get("iter_num", 0))
    return values


def run_checkpoint_path(init_from: str) -> Path | None:
    """The ckpt.pt that init_from names (the file, or a run folder holding one), else None."""
    path = Path(init_from)
    if path.is_file() and path.suffix == ".pt":
        return path
    return path / CHECKPOINT_NAME if (path / CHECKPOINT_NAME).is_file() else None


def pretrained_shape(init_from: str, dataset: str, given: dict, dropout: float) -> GPTConfig:
    """The model of the pretrained weights init_from names, with block_size as given (it may only shrink)."""
    from smallgpt.interop import hf  # the hub names and Hugging Face folders live there

    if not init_from:
        raise UserError("bad value for init_from: ''; choose scratch, resume, gpt2 or a Hugging Face folder")
    hf.check_source(init_from)
    run_ckpt = run_checkpoint_path(init_from)
    if run_ckpt is not None:  # a run folder or ckpt.pt: ours, or nanoGPT's
        shape = GPTConfig(**load_checkpoint(run_ckpt, mmap=True, dataset=dataset)["model_config"])
    else:
        shape = hf.pretrained_config(init_from)
    block_size = given.get("block_size", shape.block_size)
    if block_size > shape.block_size:
        raise UserError(f"block_size {block_size} exceeds the {shape.block_size} positions of {init_from}; "
                        f"use --block_size={shape.block_size} or less")
    ignored = sorted(k for k in given if k in SHAPE_KEYS and k != "block_size" and given[k] != getattr(shape, k))
    shape = dataclasses.replace(shape, dropout=dropout, block_size=block_size)
    print0(f"init_from={init_from}: model shape from the pretrained config (n_layer={shape.n_layer}, "
           f"n_head={shape.n_head}, n_embd={shape.n_embd}, vocab {shape.vocab_size}), block_size {block_size}"
           + (f"; ignored: {', '.join(ignored)}" if ignored else ""))
    return shape


def first_model(cfg, meta: dict, ckpt: dict | None) -> tuple[GPT, str | None]:
    """The GPT a run starts from (see the module docstring), and where its weights came from (None: scratch).

    cfg: train.TrainConfig; meta: the dataset's meta.json; ckpt: the run's own checkpoint when resuming.
    """
    if ckpt is not None:
        theirs = ckpt.get("meta") or {}
        if theirs.get("vocab_size") not in (None, meta["vocab_size"]) or (
                theirs.get("tokenizer") == "bpe" and not same_vocabulary(theirs, meta)):
            raise UserError(f"cannot resume: the checkpoint was trained on {vocabulary_name(theirs)}, dataset "
                            f"{cfg.dataset} has {vocabulary_name(meta)}")
        model = GPT(cfg.model, init_weights=False)
        load_weights(model, ckpt.pop("model"), cfg.out_dir)  # popped: the checkpoint's copy goes once loaded
        return model, ckpt.get("pretrained_from")
    if cfg.init_from == "scratch":
        return GPT(dataclasses.replace(cfg.model, vocab_size=meta["vocab_size"])), None
    run_ckpt = run_checkpoint_path(cfg.init_from)
    if run_ckpt is not None:
        return weights_of_run(cfg, meta, run_ckpt), str(run_ckpt)
    from smallgpt.interop import hf  # optional dependencies, needed only for Hugging Face weights

    theirs = hf.pretrained_meta(cfg.init_from)
    check_same_vocabulary(cfg, theirs, meta)  # GPT-2 BPE, or an exported run's
    model = hf.load_pretrained(cfg.init_from, dropout=cfg.model.dropout)
    if cfg.model.block_size < model.config.block_size:
        model.crop_block_size(cfg.model.block_size)
    add_chat_markers(model, theirs, meta, cfg.init_from)
    if meta["vocab_size"] > model.config.vocab_size:
        raise UserError(f"dataset {cfg.dataset} has {meta['vocab_size']} token ids but {cfg.init_from} knows only "
                        f"{model.config.vocab_size}; use a dataset prepared with its tokenizer")
    return model, cfg.init_from


def weights_of_run(cfg, meta: dict, path: Path) -> GPT:
    """The model of another run's checkpoint (ours or nanoGPT's), to train on: a fresh optimizer."""
    ckpt = load_checkpoint(path, dataset=cfg.dataset)
    check_same_vocabulary(cfg, ckpt["meta"], meta)
    model = model_from_checkpoint(ckpt, path, dropout=cfg.model.dropout)
    if cfg.model.block_size < model.config.block_size:
        model.crop_block_size(cfg.model.block_size)
    print0(f"init_from={cfg.init_from}: weights of {path} (iteration {ckpt.get('iter_num', '?')}), fresh optimizer")
    add_chat_markers(model, ckpt["meta"], meta, str(path))
    return model


def add_chat_markers(model: GPT, theirs: dict, meta: dict, source: str, log=print0) -> None:
    """Rows for the chat markers of a conversations dataset (meta) in weights trained without them
    (theirs: their tokenizer's meta), said in one line: GPT.add_tokens, in the padding's spare rows when
    it has enough, else in new ones."""
    if not chat_markers(meta) or chat_markers(theirs) or model.config.vocab_size >= meta["vocab_size"]:
        return
    old, rows = model.config.vocab_size, model.config.padded_vocab_size
    added = model.add_tokens(meta["vocab_size"])
    where = (f"it had no spare rows, so its embedding and head grow from {rows} to {rows + added} rows" if added else
             f"they take spare rows of its padded vocabulary ({rows} rows, no resize)")
    log(f"chat markers: ids {old}..{meta['vocab_size'] - 1} are new to {source}: {where}; each starts as the mean "
        f"of the other ids' rows")


def check_same_vocabulary(cfg, theirs: dict, meta: dict) -> None:
    """Pretrained weights (init_from) and the dataset must give token ids the same meaning."""
    if same_vocabulary(theirs, meta) or (not chat_markers(theirs) and same_vocabulary(theirs, meta, markers=False)):
        return  # (a conversations dataset may add the chat markers: add_chat_markers)
    if theirs.get("tokenizer") == "gpt2":
        raise UserError(f"init_from={cfg.init_from} needs a dataset tokenized with GPT-2 BPE, but {cfg.dataset} "
                        f"uses the {meta['tokenizer']} tokenizer; prepare one with --tokenizer=gpt2 "
                        f"(e.g. python prepare/shakespeare.py)")
    raise UserError(f"init_from={cfg.init_from} was trained on {vocabulary_name(theirs)}, dataset {cfg.dataset} on "
                    f"{vocabulary_name(meta)}; prepare the data with the run's tokenizer "
                    f"(prepare/text.py --tokenizer_from={cfg.init_from})")
