"""Robustness evaluation: every attack of the NoFrost paper, model-property metrics, distribution
shift, and an honest report.

    fastnofrost-evaluate --run runs/nofrost-nf_resnet50 [--which best_robust|best_clean|final] \\
        [--attacks clean,pgd,apgd-ce,apgd-dlr,mia,cw,rays,square,aa] [--eps 8] [--steps 20] [--n-examples N|all]
    fastnofrost-evaluate --model nf_resnet50 --checkpoint final.safetensors --data /data/imagenet ...
    deepspeed --num_gpus 8 --module fastnofrost.evaluate ...     # examples sharded over the ranks

(``fastnofrost-evaluate`` is ``python -m fastnofrost.evaluate``.) ``--run``: a run folder of
``fastnofrost-train``; its config.json gives the model, width, image size and data, and
``--which`` picks its weights; explicit flags override. Without ``--n-examples``, a validation
set of more than ``SUBSET_ABOVE`` images is evaluated on ``DEFAULT_SUBSET`` of them spread
evenly (:mod:`fastnofrost.evaluation.data`; ``--n-examples all``: every image).

or from Python, on any classifier taking [0, 1] pixels (a timm or robustbench model too, with
its normalization as its first layer):

    from fastnofrost.evaluate import evaluate
    report = evaluate(model, (x, y), attacks=("clean", "pgd", "aa"), eps=8 / 255)   # or a loader

Writes ``report.json`` and ``report.md`` and prints the table (laid out as the paper's Tables
1-2); warns when PGD's robust accuracy exceeds AutoAttack's by more than 5 points (gradient
masking). See docs/evaluation.md for every option.
"""
import argparse
import glob
import json
import os
import sys
import time
from typing import Dict, Optional, Sequence

import torch

from . import __version__, distributed
from .attacks import PRECISIONS
from .attacks.autoattack import check_standard_classes
from .attacks.base import COMPILE_LEVELS, attack_compile_step
from .data import DATASETS
from .data.shard import merge
from .device import prepare
from .metrics import margin, thickness
from .evaluation.attacks import BUDGETS, DEFAULT_ATTACKS, MENU, AttackSettings, build_attacks, check_names
from .evaluation.data import DEFAULT_SUBSET, SUBSET_ABOVE, Examples, validation_loader
from .evaluation.properties import build_metrics, check_metric_names
from .evaluation.report import build_report, to_markdown, write_report
from .evaluation.runner import attack_pass, clean_pass, metric_pass
from .evaluation.shift import (TITLES, check_outputs, class_index_of_folder, evaluate_shift, plan_shift,
                               read_class_index)


EVAL_COMPILE_LEVELS = tuple(level for level in COMPILE_LEVELS if level != "full")  # no training step here
PROG = "fastnofrost-evaluate"  # the console script; the same program as python -m fastnofrost.evaluate
WHICH = ("best_robust", "best_clean", "final")  # the weights fastnofrost-train writes: <which>.safetensors


def evaluate(model, data, attacks: Sequence[str] = DEFAULT_ATTACKS, *, eps: float = AttackSettings.eps,
             seed: int = AttackSettings.seed, precision: str = AttackSettings.precision,
             batch_size: int = AttackSettings.batch_size, n_examples: Optional[int] = None,
             compile_level: str = "none", metrics: Sequence[str] = (),
             metric_settings: Optional[Dict[str, dict]] = None, device=None,
             progress: bool = True, meta: Optional[dict] = None, **budgets: int) -> dict:
    """Robust accuracy of ``model`` under ``attacks`` (clean is always measured) and the
    ``metrics`` ('thickness', 'margin', 'smoothness'), as the report dict (see
    :func:`fastnofrost.evaluation.report.build_report`). ``budgets``: the attacks' budget
    settings (``steps`` = 20 for PGD-20, ``apgd_steps``, ``rays_queries``, ``square_queries``:
    :data:`~fastnofrost.evaluation.attacks.BUDGETS`), defaults as
    :class:`~fastnofrost.evaluation.attacks.AttackSettings`.

    ``data``: tensors ``(x, y)`` (pixels in [0, 1], int64 labels) or a loader of (x, y) batches;
    ``n_examples``: N examples spread over ``data`` (tensors) or the first N of the loader's
    order; None: all of them (the command line's default subset of large sets does not apply
    here). In a process group each rank evaluates its round-robin share (a loader must yield
    this rank's share) and every rank returns the merged report. ``compile_level``: 'none'
    (eager) or 'attack': the step of pgd, mia, cw and pgd-targeted torch.compiled, with CUDA graphs
    on CUDA, as training's ``--compile attack`` (standardized weights still computed once per
    attack); results equal eager.
    """
    if compile_level not in EVAL_COMPILE_LEVELS:
        raise ValueError(f"compile_level must be 'none' or 'attack' (evaluation has no training step to compile), "
                         f"got {compile_level!r}")
    unknown = set(budgets) - set(BUDGETS)
    if unknown:
        raise TypeError(f"evaluate() got unknown setting(s) {', '.join(sorted(unknown))}; the attacks' budgets are "
                        f"{', '.join(BUDGETS)}")
    device = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    settings = AttackSettings(eps=eps, seed=seed, precision=precision, batch_size=batch_size,
                              compile_step=attack_compile_step(compile_level, device.type), **budgets)
    chosen_attacks = build_attacks(attacks, settings)
    chosen_metrics = build_metrics(metrics, settings, metric_settings)
    model.to(device)
    rank, world = distributed.rank(), distributed.world_size()
    examples = Examples(data, n_examples=n_examples, batch_size=batch_size, rank=rank, world=world, device=device)
    show = progress and rank == 0

    local, local_metrics = {}, {}
    out, seconds = clean_pass(model, examples, precision=precision, total=examples.limit, progress=show)
    local["clean"] = {"correct": out.get("correct", torch.zeros(0, dtype=torch.bool)), "seconds": seconds}
    total = local["clean"]["correct"].numel()
    for name, attack in chosen_attacks.items():
        out, seconds = attack_pass(name, attack, model, examples, eps=eps, precision=precision, total=total,
                                   progress=show)
        local[name] = {"correct": out.get("correct", torch.zeros(0, dtype=torch.bool)), "seconds": seconds,
                       "max_linf": out["linf"].max().item() if total else 0.0}
    for name, (metric, kw) in chosen_metrics.items():
        out, seconds = metric_pass(name, metric, model, examples, total=total, progress=show)
        local_metrics[name] = {"values": out.get("value", torch.zeros(0)), "seconds": seconds, "settings": kw}

    results, metric_results = _merge(local), _merge(local_metrics)
    info = {"model": type(model).__name__, "data": type(data).__name__, "device": _device_name(device),
            "world_size": world, "torch": torch.__version__, "fastnofrost": __version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    return build_report(results, settings, metric_results, {**info, **(meta or {})})


def _merge(local: Dict[str, dict]) -> Dict[str, dict]:
    """Per-sample tensors of every rank merged in evaluation order; times: the slowest rank's;
    largest perturbation: over all ranks."""
    ranks = distributed.gather(local)
    merged = {}
    for name, first in local.items():
        entry = {}
        for key, value in first.items():
            values = [r[name][key] for r in ranks]
            if torch.is_tensor(value):
                entry[key] = torch.tensor(merge([v.tolist() for v in values]), dtype=value.dtype)
            elif key in ("seconds", "max_linf"):
                entry[key] = max(values)
            else:
                entry[key] = value
        merged[name] = entry
    return merged


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# ------------------------------------------------------------------------------ command line

def n_examples_flag(text: str):
    """--n-examples: 'all' or a number."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description=__doc__.split("\n\n")[0] + f" {PROG} and python -m "
                                                                         "fastnofrost.evaluate are the same program.")
    p.add_argument("--run", metavar="DIR", default=None,
                   help="a fastnofrost-train run folder: model, width, image size and data from its config.json, "
                        "weights from --which; the flags below override")
    p.add_argument("--which", choices=WHICH, default=None,
                   help=f"the run's weights, DIR/<which>.safetensors; None: {WHICH[0]}")
    p.add_argument("--model", default=None, help="model name (fastnofrost.models.list_models()); None: the run's")
    p.add_argument("--checkpoint", default=None,
                   help="weights: safetensors or torch file (loaded safely); None: the run's --which")
    p.add_argument("--num-classes", type=int, default=None, help="model outputs; None: the data's classes")
    p.add_argument("--width", type=float, default=None, help="model channel width multiplier; None: the run's, or 1.0")
    p.add_argument("--data", default=None,
                   help=f"ImageNet-layout folder or one of {', '.join(DATASETS)}; None: the run's")
    p.add_argument("--data-backend", default="torch", choices=("torch", "dali-cpu", "dali-gpu"),
                   help="decoding of folders")
    p.add_argument("--image-size", type=int, default=None,
                   help="validation resize + center crop; None: the run's, or 224")
    p.add_argument("--workers", type=int, default=4, help="data loader processes")
    p.add_argument("--n-examples", type=n_examples_flag, default=None, metavar="N|all",
                   help=f"N examples spread evenly over the validation set, or all; None: all, or {DEFAULT_SUBSET:,} "
                        f"spread evenly when the set has more than {SUBSET_ABOVE:,}")
    p.add_argument("--batch-size", type=int, default=AttackSettings.batch_size, help="examples per attack call")
    p.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS), help=f"comma list of {','.join(MENU)}")
    p.add_argument("--eps", type=float, default=AttackSettings.eps * 255, help="L-inf radius in 1/255 units")
    for budget, (field, users) in BUDGETS.items():
        p.add_argument(f"--{budget.replace('_', '-')}", type=int, default=getattr(AttackSettings, budget),
                       help=f"{field} of {', '.join(users)}")
    p.add_argument("--precision", default=AttackSettings.precision, choices=tuple(PRECISIONS),
                   help="model precision in attacks")
    p.add_argument("--seed", type=int, default=AttackSettings.seed,
                   help="random starts, targets, Square windows, AutoAttack")
    p.add_argument("--compile", default="auto", choices=("auto",) + EVAL_COMPILE_LEVELS,
                   help="attack: torch.compile the step of pgd, mia, cw, pgd-targeted (CUDA graphs on CUDA); "
                        "auto: attack on CUDA, none on CPU")
    p.add_argument("--compile-attack", dest="retired_compile_attack", help=argparse.SUPPRESS)
    p.add_argument("--metrics", default="", help="comma list of thickness,margin,smoothness, or all; empty: none")
    p.add_argument("--thickness-eps", type=float, default=thickness.EPS, help="L2 radius of the thickness PGD")
    p.add_argument("--thickness-step", type=float, default=thickness.STEP, help="L2 step of the thickness PGD")
    p.add_argument("--thickness-steps", type=int, default=thickness.STEPS, help="steps of the thickness PGD")
    p.add_argument("--thickness-points", type=int, default=thickness.POINTS, help="points on each segment")
    p.add_argument("--margin-max-radius", type=float, default=margin.MAX_RADIUS, help="largest L2 radius searched")
    p.add_argument("--margin-steps", type=int, default=margin.STEPS, help="L2 PGD steps per probe")
    p.add_argument("--margin-search-steps", type=int, default=margin.SEARCH_STEPS, help="bisections of the radius")
    for name, title in TITLES.items():
        p.add_argument(f"--{name}", metavar="DIR", default=None, help=f"{title} folder")
    p.add_argument("--class-index", default=None,
                   help="file of the model's wnids in output order; None: sorted class folders of --data/train")
    p.add_argument("--shift-examples", type=int, default=None, help="examples spread over each shift split; None: all")
    p.add_argument("--out", default=None,
                   help="report folder; None: DIR/eval-<which>-<date-time> with --run, else eval_<model>_<date-time>")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"),
                   help="cuda: the rank's GPU under a launcher")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed's
    args = p.parse_args(argv)
    try:
        apply_run(args)
        check_args(args)
    except ValueError as err:
        p.error(str(err))
    return args


def apply_run(args) -> None:
    """Fill --model, --width, --image-size, --data and --checkpoint from --run's config.json and
    --which where not given (``args.which``: the weights chosen, None when --checkpoint names
    them); the defaults of --width and --image-size without a run; a missing value or a run
    folder lacking what it needs is one sentence."""
    if args.run is None:
        missing = [f"--{name}" for name in ("model", "checkpoint", "data") if getattr(args, name) is None]
        if missing:
            names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
            raise ValueError(f"{names} {'is' if len(missing) == 1 else 'are'} required without --run "
                             f"(--run DIR: a fastnofrost-train run folder, which names them)")
        if args.which is not None:
            raise ValueError("--which picks a run's weights: it needs --run DIR")
        args.width = 1.0 if args.width is None else args.width
        args.image_size = 224 if args.image_size is None else args.image_size
        return
    if args.which is not None and args.checkpoint is not None:
        raise ValueError("--which and --checkpoint both choose the weights: give one")
    run_dir = args.run
    if not os.path.isdir(run_dir):
        raise ValueError(f"--run {run_dir!r} is not a folder")
    weights = sorted(os.path.basename(f) for f in glob.glob(os.path.join(glob.escape(run_dir), "*.safetensors")))
    has = f"it holds {', '.join(weights)}" if weights else "it holds no weights (*.safetensors) yet"
    config_path = os.path.join(run_dir, "config.json")
    try:
        with open(config_path) as fh:
            config = json.load(fh)
    except FileNotFoundError:
        raise ValueError(f"--run {run_dir}: {config_path} is missing (fastnofrost-train writes it when a run starts; "
                         f"{has}); without --run, give --model, --width, --image-size, --data and --checkpoint"
                         ) from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"--run {run_dir}: {config_path} is not readable JSON ({exc})") from None
    if not isinstance(config, dict) or not all(key in config for key in ("model", "width", "image_size", "data")):
        raise ValueError(f"--run {run_dir}: {config_path} lacks model, width, image_size or data: not a "
                         "fastnofrost-train config")
    for name in ("model", "width", "image_size", "data"):
        if getattr(args, name) is None:
            setattr(args, name, config[name])
    if args.data is None:
        raise ValueError(f"--run {run_dir}: the run names no data set (data_backend "
                         f"{config.get('data_backend')!r}): give --data")
    if args.checkpoint is None:
        args.which = args.which or WHICH[0]
        args.checkpoint = os.path.join(run_dir, f"{args.which}.safetensors")
        if not os.path.isfile(args.checkpoint):
            others = [w for w in WHICH if f"{w}.safetensors" in weights]
            hint = (f"; choose with --which {' or --which '.join(others)}" if others else
                    "; final.safetensors is written when training ends")
            why = " (written when the run validates: --val-every)" if args.which.startswith("best_") else ""
            raise ValueError(f"--run {run_dir}: {args.checkpoint} is missing{why}; {has}{hint}")


def check_args(args) -> None:
    """One clear sentence for the first bad option, before any work starts."""
    from .models import list_models

    def need(ok, message):
        if not ok:
            raise ValueError(message)

    need(args.model in list_models(), f"--model {args.model!r} is unknown; choose one of {', '.join(list_models())}")
    need(os.path.isfile(args.checkpoint), f"--checkpoint {args.checkpoint!r} is not a file")
    need(os.path.isdir(args.data) or args.data in DATASETS,
         f"--data {args.data!r} is neither a folder nor one of {', '.join(DATASETS)}")
    need(0 < args.eps <= 255, f"--eps must be in (0, 255] (1/255 units), got {args.eps}")
    for option in (*BUDGETS, "batch_size", "image_size",
                   "thickness_steps", "margin_steps"):
        need(getattr(args, option) >= 1, f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    for option in ("n_examples", "shift_examples", "num_classes"):
        value = getattr(args, option)
        need(value is None or value == "all" or value >= 1, f"--{option.replace('_', '-')} must be >= 1, got {value}")
    need(args.width > 0, f"--width must be > 0, got {args.width}")
    need(args.thickness_points >= 2, f"--thickness-points must be >= 2, got {args.thickness_points}")
    need(args.margin_search_steps >= 0, f"--margin-search-steps must be >= 0, got {args.margin_search_steps}")
    for option in ("thickness_eps", "thickness_step", "margin_max_radius"):
        need(getattr(args, option) > 0, f"--{option.replace('_', '-')} must be > 0, got {getattr(args, option)}")
    need(args.device == "cpu" or torch.cuda.is_available(), "--device cuda needs a CUDA device; none is visible")
    need(args.seed >= 0, f"--seed must be >= 0, got {args.seed}")
    need(args.retired_compile_attack is None, "--compile-attack was replaced by --compile auto|none|attack "
                                              "(auto: attack on CUDA, with CUDA graphs; none on CPU)")
    check_names(args.attacks.split(","))
    check_metric_names(args.metrics.split(","))
    shift_plan(args)  # folder layouts and class index


def shift_plan(args):
    """({set: folder}, class index, splits) of the requested distribution-shift sets."""
    sets = {name: getattr(args, name.replace("-", "_")) for name in TITLES}
    sets = {name: root for name, root in sets.items() if root is not None}
    if not sets:
        return sets, None, []
    index = read_class_index(args.class_index) if args.class_index else class_index_of_folder(args.data)
    return sets, index, plan_shift(sets, index)


def resolve_compile(flag: str, device: torch.device) -> str:
    """--compile auto: the attack step compiled on CUDA (CUDA graphs, where a step is launch
    bound); eager on CPU, as training's auto there (a CPU evaluation's compile was not measured
    to pay for itself)."""
    return flag if flag != "auto" else ("attack" if device.type == "cuda" else "none")


def metric_overrides(args) -> Dict[str, dict]:
    return {"thickness": dict(eps=args.thickness_eps, step=args.thickness_step, steps=args.thickness_steps,
                              n_points=args.thickness_points),
            "margin": dict(max_radius=args.margin_max_radius, steps=args.margin_steps,
                           search_steps=args.margin_search_steps)}


def run(args, argv: Sequence[str] = ()) -> dict:
    """The evaluation the options describe; rank 0 prints and writes the report."""
    from .models import create_model, load_checkpoint
    from .nn import group_weights

    device = prepare(distributed.init_from_env(args.device) if distributed.launched() else torch.device(args.device))
    rank, world = distributed.rank(), distributed.world_size()
    sets, class_index, splits = shift_plan(args)
    loader, n, which_examples = validation_loader(args.data, backend=args.data_backend, image_size=args.image_size,
                                  batch_size=args.batch_size, n_examples=args.n_examples, rank=rank, world=world,
                                  device=device, workers=args.workers)
    classes = args.num_classes or loader.num_classes
    if "aa" in args.attacks.split(","):  # before any attack runs
        try:
            check_standard_classes(classes, args.data)
        except ValueError as exc:
            raise SystemExit(f"{PROG} --attacks aa: {exc}: leave aa out") from None
    model = create_model(args.model, num_classes=classes, width=args.width)
    load_checkpoint(model, args.checkpoint)
    model.to(device).eval()
    group_weights(model)  # NF models: each attack standardizes every weight in one op
    if splits:
        check_outputs(splits, class_index, classes)
    meta = {"model": args.model, "checkpoint": args.checkpoint, "data": args.data, "examples": which_examples,
            "run": args.run, "which": args.which, "command": " ".join([PROG, *argv])}
    report = evaluate(model, loader, args.attacks.split(","), eps=args.eps / 255,
                      **{budget: getattr(args, budget) for budget in BUDGETS}, seed=args.seed,
                      precision=args.precision, batch_size=args.batch_size, n_examples=n,
                      compile_level=resolve_compile(args.compile, device), metrics=args.metrics.split(","),
                      metric_settings=metric_overrides(args),
                      device=device, progress=not args.no_progress, meta=meta)
    if sets:
        report["shift"] = evaluate_shift(model, sets, class_index, image_size=args.image_size,
                                         batch_size=args.batch_size, n_examples=args.shift_examples,
                                         workers=args.workers, device=device, precision=args.precision,
                                         progress=not args.no_progress and rank == 0)
    if rank == 0:
        out = args.out or default_out(args)
        paths = write_report(report, out)
        print(to_markdown(report))
        for warning in report["warnings"]:
            print(f"WARNING: {warning}", file=sys.stderr)
        print(f"report written to {paths['json']} and {paths['md']}", file=sys.stderr)
    return report


def default_out(args) -> str:
    """The report folder without --out: inside the run with --run, else in the working folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.run is not None:
        name = args.which or os.path.splitext(os.path.basename(args.checkpoint))[0]
        return os.path.join(args.run, f"eval-{name}-{stamp}")
    return f"eval_{args.model}_{stamp}"


def main(argv=None) -> dict:
    """The command line; returns the report dict (the Python entry: see :func:`cli`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        return run(args, argv)
    finally:
        distributed.shutdown()


def cli(argv=None) -> int:
    """The ``fastnofrost-evaluate`` console script: :func:`main`, exit status 0 (errors exit
    through argparse or SystemExit with their own)."""
    main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
