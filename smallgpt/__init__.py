"""smallgpt: the library behind train.py, sample.py and eval.py; model.py stands apart and imports none of it.

Each module has one job, named by its file:

    cli          configs: typed dataclasses from TOML files and --key=value; run_main's one-line errors
    errors       UserError, the one-line error every module raises for what the user can fix
    data         datasets (train.bin / val.bin / meta.json), batches and each process's share of them
    tokenizer    char, byte, GPT-2 BPE and trained BPE tokenizers; meta.json
    prepare      the engine of prepare/: text files in, a dataset folder out (streaming, parallel)
    bpe          learning a byte-level BPE from text (rustbpe)
    checkpoint   ckpt.pt: its format, atomic saves, safe loads (weights_only=True), RNG state
    init_from    a run's first weights: scratch, resume, another run, Hugging Face GPT-2
    device       devices, precision, compile, CPU threads
    distributed  processes under torchrun (DDP) and what they agree on
    fsdp         sharding the model over processes (FSDP2)
    memory       the memory plan checked before a run starts (python -m smallgpt.memory)
    optim        AdamW and Muon, parameter groups, the learning rate
    preemption   SIGTERM and Ctrl-C: stop within a step and save
    progress     progress bars and plain progress lines
    report       what train.py prints
    runfolder    a run's folder: lock, ckpt.pt, metrics.jsonl, config.json, wandb, loss.png
    plot         loss curves of runs (python -m smallgpt.plot)
    inference    streaming decoded text, fast one-row matmuls on CPUs
    interop/     Hugging Face (python -m smallgpt.interop.hf) and nanoGPT's checkpoints, data and configs

Nothing here is imported on `import smallgpt`; import the module you need.
"""
