"""The exact Jacobian-lens estimator (TransformerLens's and the reference's), resumable.

For each prompt: one forward pass with the prompt replicated `dim_batch` times, then
`ceil(d_model / dim_batch)` backward passes, each planting one-hot cotangents for
`dim_batch` output dimensions at every valid position of the final block's output. By
causality the gradient at source position t is the sum over targets t' ≥ t. Rows are
averaged over valid source positions (the first `skip_first_positions` and the last
position excluded) and prompts count equally.

Unlike TransformerLens's `fit`, the forward stops after the last block
(`stop_at_layer`): the final norm and the `[d_model, d_vocab]` unembedding, which the
estimator never uses, are not run `dim_batch` times per prompt.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from hooklens.artifacts import load_weights_only
from hooklens.errors import InputError, RunStateError
from hooklens.files import atomic_write
from hooklens.model import ModelAdapter
from hooklens.validation import positive_int, token_id_tensor


def prompt_tokens(model: Any, prompt: str | Any, max_seq_len: int) -> Int[Tensor, "1 pos"]:
    """A prompt (text, or token ids) as `[1, pos]` ids cut to `max_seq_len`."""
    if isinstance(prompt, str):
        tokens = model.to_tokens(prompt)
    else:
        tokens = token_id_tensor(prompt, "prompt")
        tokens = tokens if tokens.ndim == 2 else tokens[None]
    return tokens[:, :max_seq_len]


def prompt_jacobians(
    model: Any,
    tokens: Int[Tensor, "1 pos"],
    source_layers: Sequence[int],
    *,
    dim_batch: int,
    skip_first_positions: int,
) -> dict[int, Float[Tensor, "d_model d_model"]]:
    """`{layer: J}` of one prompt (the model's parameters must be frozen)."""
    adapter = ModelAdapter(model)
    d_model, n_layers = adapter.d_model, adapter.n_layers
    target_layer = n_layers - 1
    valid = torch.arange(skip_first_positions, tokens.shape[1] - 1)
    root = adapter.hook_name("resid_post", min(source_layers))
    captured: dict[str, Tensor] = {}

    def capture_as(name: str):
        # By the name we asked for: a bridge calls its hooks by their canonical names.
        def capture(activation: Tensor, hook: Any) -> Tensor:
            if name == root and not activation.requires_grad:
                activation.requires_grad_(True)  # the graph starts here, not at the weights
            captured[name] = activation
            return activation

        return capture

    names = [adapter.hook_name("resid_post", layer) for layer in {*source_layers, target_layer}]
    replicated = tokens.expand(dim_batch, -1).to(adapter.device)
    with torch.enable_grad(), model.hooks(fwd_hooks=[(n, capture_as(n)) for n in names]):
        model(replicated, stop_at_layer=n_layers)  # no final norm, no unembedding
    target = captured[adapter.hook_name("resid_post", target_layer)]
    sources = [captured[adapter.hook_name("resid_post", layer)] for layer in source_layers]
    jacobians = {layer: torch.zeros(d_model, d_model) for layer in source_layers}
    cotangent = torch.zeros_like(target)
    rows = torch.arange(dim_batch, device=target.device)
    positions = valid.to(target.device)
    starts = range(0, d_model, dim_batch)
    for index, start in enumerate(starts):
        n_dims = min(dim_batch, d_model - start)
        cotangent.zero_()
        cotangent[rows[:n_dims, None], positions[None, :], start + rows[:n_dims, None]] = 1.0
        grads = torch.autograd.grad(
            target, sources, grad_outputs=cotangent, retain_graph=index < len(starts) - 1
        )
        for layer, grad in zip(source_layers, grads, strict=True):
            mean = grad[:n_dims, positions.to(grad.device)].float().mean(dim=1)
            jacobians[layer][start : start + n_dims] = mean.cpu()
    return jacobians


def fit_jacobians(
    model: Any,
    prompts: Sequence[Any],
    *,
    source_layers: Sequence[int] | None = None,
    max_seq_len: int = 128,
    skip_first_positions: int = 16,
    dim_batch: int = 8,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    progress: bool = True,
) -> tuple[dict[int, Tensor], int]:
    """`({layer: mean J}, n_prompts)` over `prompts` (see the module docstring).

    With `checkpoint`, the running sums are written there (atomically, every
    `checkpoint_every` prompts and at the end) in the reference's fit-checkpoint format
    (`jacobian_sum`, `n_done`, `next_idx`, `source_layers`, `target_layer`,
    `skip_first`), and a checkpoint already there is resumed: it must have been made
    with the same layers and `skip_first_positions`; its `next_idx` prompts are skipped.
    """
    adapter = ModelAdapter(model)
    n_layers, d_model = adapter.n_layers, adapter.d_model
    layers = sorted(range(n_layers - 1) if source_layers is None else map(int, source_layers))
    if not layers or any(not 0 <= layer < n_layers - 1 for layer in layers):
        raise InputError(
            f"source_layers must lie in 0..{n_layers - 2} (the last block's output is the "
            f"final residual), got {layers}"
        )
    dim_batch = positive_int(dim_batch, "dim_batch", at_most=d_model)
    positive_int(max_seq_len, "max_seq_len")
    sums = {layer: torch.zeros(d_model, d_model) for layer in layers}
    n_done = next_idx = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_file():
        state = load_weights_only(path, "a Jacobian-lens fit checkpoint")
        if (list(state["source_layers"]), int(state["skip_first"])) != (
            layers,
            skip_first_positions,
        ):
            raise RunStateError(
                f"{path} was made for source layers {state['source_layers']} skipping "
                f"{state['skip_first']} positions; this fit asks for {layers} and "
                f"{skip_first_positions}: repeat its settings or use another checkpoint"
            )
        sums = {int(k): v.float() for k, v in state["jacobian_sum"].items()}
        n_done, next_idx = int(state["n_done"]), int(state["next_idx"])

    def save() -> None:
        if path is None:
            return
        state = {
            "jacobian_sum": sums,
            "n_done": n_done,
            "next_idx": next_idx,
            "source_layers": layers,
            "target_layer": n_layers - 1,
            "skip_first": skip_first_positions,
        }
        atomic_write(path, lambda tmp: torch.save(state, tmp))

    frozen = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        bar = tqdm(total=len(prompts), initial=next_idx, desc="fit J-lens", disable=not progress)
        for index in range(next_idx, len(prompts)):
            tokens = prompt_tokens(model, prompts[index], max_seq_len)
            if tokens.shape[1] > skip_first_positions + 1:
                per_prompt = prompt_jacobians(
                    model,
                    tokens,
                    layers,
                    dim_batch=dim_batch,
                    skip_first_positions=skip_first_positions,
                )
                for layer in layers:
                    sums[layer] += per_prompt[layer]
                n_done += 1
            next_idx = index + 1
            bar.update(1)
            if next_idx % checkpoint_every == 0:
                save()
        bar.close()
    finally:
        for param, requires_grad in frozen:
            param.requires_grad_(requires_grad)
    save()
    if n_done == 0:
        raise InputError(
            f"no prompt has more than skip_first_positions + 1 = {skip_first_positions + 1} "
            "tokens, so nothing was fitted: give longer prompts or a smaller "
            "skip_first_positions"
        )
    return {layer: total / n_done for layer, total in sums.items()}, n_done


# --- `hooklens fit-jlens` ---------------------------------------------------------------


def add_arguments(parser: Any) -> None:
    from hooklens import models

    parser.add_argument("--model", default=models.DEFAULT_MODEL, help="model name")
    models.add_model_class_argument(parser)
    parser.add_argument(
        "--data", default="wikipedia-summaries", help="hub dataset or local file(s) of text"
    )
    parser.add_argument("--text-field", default="text", help="the field holding the text")
    parser.add_argument(
        "--output", required=True, help="the lens: a .pt file (reference format) or a directory"
    )
    parser.add_argument("--prompts", type=int, default=100, help="training texts to fit on")
    parser.add_argument("--max-seq-len", type=int, default=128, help="tokens per prompt")
    parser.add_argument(
        "--skip-first", type=int, default=16, help="leading positions left out of the mean"
    )
    parser.add_argument("--dim-batch", type=int, default=8, help="output dimensions per backward")
    parser.add_argument(
        "--source-layers", type=int, nargs="+", help="block outputs to fit (default: all)"
    )
    parser.add_argument("--checkpoint-every", type=int, default=10, help="prompts between saves")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted fit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def checkpoint_path(output: str | os.PathLike) -> Path:
    """Where `hooklens fit-jlens --output OUTPUT` keeps its running sums."""
    output = Path(output)
    return output.with_name(f"{output.name}.fit-checkpoint.pt")


def run(args: Any) -> int:
    """`hooklens fit-jlens`: fit a Jacobian lens on the first `--prompts` training texts."""
    import itertools

    from hooklens import models
    from hooklens.errors import OutputExistsError
    from hooklens.lenses import JacobianLens
    from hooklens.training.data import check_data_source, load_texts, split_texts

    for flag in ("prompts", "max_seq_len", "dim_batch", "checkpoint_every"):
        positive_int(getattr(args, flag), f"--{flag.replace('_', '-')}")
    if args.skip_first < 0:
        raise InputError(f"--skip-first must be at least 0, got {args.skip_first}")
    output, checkpoint = Path(args.output), checkpoint_path(args.output)
    if args.resume and not checkpoint.is_file():
        raise FileNotFoundError(f"no fit to resume: {checkpoint} does not exist")
    if not args.resume and (output.exists() or checkpoint.exists()):
        raise OutputExistsError(
            f"{output if output.exists() else checkpoint} exists: pass --resume to continue "
            "its fit, or choose another --output"
        )
    check_data_source(args.data, args.text_field)
    model = models.load(args.model, model_class=args.model_class, processing=False)
    texts = (row[args.text_field] for row in load_texts(args.data, streaming=True))
    prompts = list(itertools.islice(split_texts(texts, held_out=False), args.prompts))
    lens = JacobianLens.fit(
        model,
        prompts,
        source_layers=args.source_layers,
        max_seq_len=args.max_seq_len,
        skip_first_positions=args.skip_first,
        dim_batch=args.dim_batch,
        checkpoint=checkpoint,
        checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
        metadata={"corpus": str(args.data)},
    )
    lens.save(output)
    checkpoint.unlink(missing_ok=True)
    print(f"fitted {output}: {lens!r}")
    return 0
