"""The training experiment: a small LLaMA-style (or GPT-2-style, --arch gpt2) model trained
under several precision recipes side by side (`fp4swift train`), the activation-fidelity table
of Wang et al. (`fp4swift fidelity`), and a scaling-law fit over finished runs
(`fp4swift scaling-law`). Training needs PyTorch (pip install -e .[torch]); the fit needs scipy.

    model.py     the decoders (llama: RMSNorm, RoPE, SwiGLU; gpt2: LayerNorm, learned positions,
                 GELU; causal attention, byte vocabulary), parameter counts
    data.py      byte corpus, split by file, batch sampler = pure function of (seed, step)
    config.py    TrainConfig (DIR/config.json) and the flags that set it
    recipes.py   recipe specs: names, ablation overrides, target-precision schedules
    step.py      one training step (shared by train and fidelity), optimizer, lr schedule, evaluation
    threads.py   thread budgets of torch, the Swift core and OpenBLAS
    outputs.py   a run directory's files: metrics.csv, checkpoints, summary, run.json
    trials.py    a trial (recipe x learning rate x seed) and its folder
    runner.py    the Runner: every trial in turns of 10 steps, checkpoints, resume, Ctrl-C
    command.py   `fp4swift train` as a command: flags to a configuration, the run, summary, exit status
    compare.py   seeds and rates: paired gaps, 95% intervals, verdicts, each recipe's best rate
    collect.py   `fp4swift compare`: trials of separate runs read together
    gridstats.py `fp4swift grid-stats`: trained weights on the FP4 grid (the DGE study)
    distributed.py  `fp4swift train` data-parallel under torchrun (`--nproc P` on one machine,
                 `torchrun ... -m fp4swift train` on several): DistributedDataParallel over gloo,
                 the global batch split across the ranks, rank 0 alone writes; recipes with
                 whole-batch statistics (per-tensor OCC thresholds or scales) are changed by the
                 sharding, and the summary says so
    plots.py     loss-curve and scaling-law PNGs
    fidelity.py  Table 1 of Wang et al. on this model's linear-layer inputs
    scaling.py   L(N, D) = (A/(N·effN)^α + B/(D·effD)^β)^γ + E fitted to finished runs
"""
