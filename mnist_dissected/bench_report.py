"""The benchmark's figures as the table the README quotes (Part 4's companion reads them too).

Why this module exists: :mod:`mnist_dissected.bench` measures; turning its figures into lines a
reader compares across machines is a job of its own, and keeps each module short.
"""

from __future__ import annotations

from typing import Any

from .recipes import get_recipe


def _s(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.2f}"


def report(figures: dict[str, Any]) -> str:
    """The figures as the table the README quotes."""
    m, classic = figures["machine"], figures["classic_epoch_s"]
    fast = get_recipe("fast")
    lines = [
        f"mnist-dissected bench: torch {m['torch']}, Python {m['python']}, {m['device']}, "
        f"{m['threads']} threads, {m['processor']} ({m['vector_isa']})",
        "",
        "One-time costs (s):",
        f"  data as tensors            {_s(figures['one_time_s']['data_tensors'])}",
        f"  torch.compile (first run)  {_s(figures['one_time_s']['compile'])}",
        f"  CUDA graph capture         {_s(figures['one_time_s']['cuda_graph_capture'])}",
        "",
        "Example's recipe (SGD lr 0.01, momentum 0.5, batch 64), seconds per epoch:",
        f"  DataLoader (PIL -> ToTensor -> Normalize)  {_s(classic['dataloader'])}",
        f"  whole tensors (TensorBatches)              {_s(classic['tensors'])}",
    ]
    step = figures["step"]
    if step is not None:
        lines += [
            "",
            f"One fast-recipe step (batch {step['batch_size']}): {step['step_ms']:.1f} ms, "
            f"{step['operators_per_step']} operators, {step['flops_per_step'] / 1e6:.0f} MFLOP",
            f"  {step['gflops']:.1f} GFLOP/s (one large matrix product here: "
            f"{step['matmul_gflops']:.1f} GFLOP/s)",
            "  where its time goes: "
            + ", ".join(f"{part} {100 * share:.0f}%" for part, share in step["share"].items()),
        ]
    lines += [
        "",
        f"Fast recipe ({fast.optimizer}, {fast.schedule}, batch {fast.batch_size}, "
        f"{fast.epochs} epochs), test set scored once at the end:",
    ]
    for name, v in figures["fast"].items():
        tests = ", ".join(f"{100 * r['test_accuracy']:.2f}" for r in v["runs"])
        lines.append(
            f"  {name:<9} {_s(v['epoch_s'])} s/epoch; 99% reached by "
            f"{v['reached_99']}/{v['seeds']} "
            f"seeds in {_s(v['median_s'])} s median (min {_s(v['min_s'])}, max {_s(v['max_s'])}); "
            f"test % {tests}"
        )
        if v.get("flops_to_99"):
            lines.append(f"  {'':<9} training FLOPs to 99%: {v['flops_to_99'] / 1e12:.2f} TFLOP")
    for name, why in figures["skipped"].items():
        lines.append(f"  {name:<9} not run: {why}")
    ratio = figures["ratio_fast_to_99_over_classic_dataloader_epoch"]
    if ratio is not None:
        lines += [
            "",
            f"Fast recipe's seconds to 99% / one DataLoader epoch of the example: {ratio:.2f}",
        ]
    return "\n".join(lines)
