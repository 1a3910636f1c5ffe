"""The training experiment: a small LLaMA-style model trained under several precision
recipes side by side (`fp4swift train`), and the activation-fidelity table of Wang et al.
(`fp4swift fidelity`). Needs PyTorch (pip install -e .[torch]).

    model.py     the decoder (RMSNorm, RoPE, causal attention, SwiGLU, byte vocabulary)
    data.py      byte corpus, split by file, batch sampler = pure function of (seed, step)
    runner.py    training loop, checkpoints/resume, metrics, summary
    plots.py     loss-curve PNG
    fidelity.py  Table 1 of Wang et al. on this model's linear-layer inputs
"""
