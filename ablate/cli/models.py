"""Commands on models: bench, sample, import, export, variants."""

import json
import sys
import time
from pathlib import Path

from ablate.cli.common import (
    check_writable,
    console,
    contexts,
    positive,
    store_hint,
    store_options,
    stored,
    study_name,
    uri,
)
from ablate.core.errors import AblateError
from ablate.importers import KINDS


def add_commands(sub) -> None:
    _bench_parser(sub)
    _sample_parser(sub)
    _import_parser(sub)
    _export_parser(sub)
    _variants_parser(sub)


def _bench_parser(sub) -> None:
    bench = sub.add_parser(
        "bench", help="time training steps per variant: tokens/s, memory, FLOPs/token, share of the matmul peak"
    )
    bench.add_argument("--study", type=Path, help="bench this study's variants at their planned shapes")
    bench.add_argument(
        "--variant",
        action="append",
        default=[],
        help="a registered mixer (or, with --study, a variant of it); repeat for more (default: mha, aft-simple, retention)",
    )
    bench.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model setting for every variant (YAML value)",
    )
    bench.add_argument("--batch-size", type=positive, help="sequences per step (default: the study's, else 16)")
    bench.add_argument("--steps", type=positive, default=20, help="timed steps (default 20)")
    bench.add_argument("--warmup", type=positive, default=5, help="untimed steps first (default 5)")
    bench.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when there is one (default: auto)"
    )
    bench.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up includes compiling)")
    bench.add_argument(
        "--parallel", type=positive, default=1, metavar="K", help="K copies at once, in K processes (default 1)"
    )
    bench.add_argument("--threads", type=positive, help="torch threads (default: torch's choice)")
    bench.add_argument("--json", action="store_true", help="a JSON list of result objects")
    bench.add_argument(
        "--decode",
        action="store_true",
        help="time decoding from state instead of training: prefill, ms per token and state bytes by context",
    )
    bench.add_argument(
        "--contexts",
        type=contexts,
        default="256,1k,4k,16k",
        help="with --decode: the contexts to decode at (default 256,1k,4k,16k)",
    )
    bench.add_argument(
        "--plots",
        type=Path,
        default=Path("results/bench"),
        help="with --decode: where the plots go (default results/bench)",
    )
    bench.set_defaults(func=bench_command)


def _sample_parser(sub) -> None:
    sample = sub.add_parser("sample", help="generate text from a finished trial's model (from its MLflow run)")
    sample.add_argument("run_id", help="the MLflow run id of a finished final trial")
    sample.add_argument("--prompt", default="", help="text to continue (token ids for token-array data; default: none)")
    sample.add_argument("--tokens", type=positive, default=100, help="tokens to generate (default 100)")
    sample.add_argument("--temperature", type=float, default=1.0, help="0 takes the most likely token (default 1)")
    sample.add_argument("--top-k", type=positive, help="draw from the k most likely tokens only")
    sample.add_argument("--seed", type=int, default=0, help="the sampling RNG's seed (default 0)")
    sample.add_argument("--json", action="store_true", help="prompt and generated token ids and text as JSON")
    sample.add_argument(
        "--recompute", action="store_true", help="recompute the forward for every token instead of decoding from state"
    )
    store_options(sample)
    sample.set_defaults(func=sample_command)


def _import_parser(sub) -> None:
    imp = sub.add_parser("import", help="record a model trained elsewhere as a finished run (with its model)")
    imp.add_argument(
        "kind",
        choices=KINDS,
        help="the checkpoint's format: strawberry (Strawberry's train.py), nanogpt (nanoGPT's ckpt.pt) "
        "or hf (a folder `ablate export` wrote)",
    )
    imp.add_argument("checkpoint", type=Path, help="the checkpoint file (for hf: the folder)")
    imp.add_argument("--study", type=study_name, help="MLflow experiment to record it in (default: KIND-imports)")
    store_options(imp)
    imp.set_defaults(func=import_command)


def _export_parser(sub) -> None:
    export = sub.add_parser(
        "export", help="write a run's model as a Hugging Face folder (from_pretrained, generate, lm-eval)"
    )
    export.add_argument("run_id", help="a finished final trial's or an imported checkpoint's MLflow run id")
    export.add_argument("folder", type=Path, help="the folder to write")
    export.add_argument("--force", action="store_true", help="replace what the folder holds")
    store_options(export)
    export.set_defaults(func=export_command)


def _variants_parser(sub) -> None:
    variants = sub.add_parser(
        "variants", help="list the registered mixers: what a study's variant names as its model.mixer"
    )
    variants.add_argument("--json", action="store_true", help="the name and description of each, as JSON")
    variants.set_defaults(func=variants_command)


def bench_command(args) -> int:
    """Bench each variant; print a table (or JSON) with the measured matmul peak beside it."""
    import torch

    from ablate import bench

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise AblateError("--device cuda: no CUDA device is available here")
    train = {"device": args.device, "compile": args.compile} | (
        {"batch_size": args.batch_size} if args.batch_size else {}
    )
    chosen = bench.targets(args.study, args.variant, dict(_setting(text) for text in args.model), train)
    if args.decode:
        return _bench_decode(args, chosen)

    def said(row) -> None:
        if not args.json:
            print(f"{row['variant']}: {row['tokens_per_s']:,.0f} tokens/s", file=sys.stderr)

    rows = bench.run(chosen, args.steps, args.warmup, args.parallel, args.device, said)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        bench.print_table(rows, bench.device_named(args.device), args.parallel > 1, console())
    return 0


def _bench_decode(args, chosen) -> int:
    """Each variant, freshly built at its shape on the device, decoded from its state."""
    import torch

    from ablate.inference import cost
    from ablate.model import build_model
    from ablate.nn.devices import device_named
    from ablate.train.trainer import seed_everything

    device, rows = device_named(args.device), []
    for name, model_cfg, _ in chosen:
        seed_everything(0)
        model = build_model(model_cfg, device=device)
        row = {"variant": name, "mixer": model_cfg.mixer, "device": str(device), "threads": torch.get_num_threads()}
        row |= {"n_params_non_embedding": model.n_params(non_embedding=True)}
        rows.append(row | cost.measure(model, args.contexts))
        if not args.json:
            print(f"{name}: {rows[-1]['decode_tokens_per_s']:,.0f} decoded tokens/s", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cost.print_table(rows, device, console())
    check_writable(args.plots, "--plots")
    paths = cost.plot(rows, args.plots, device)
    print(f"plots: {', '.join(str(p) for p in paths)}")
    return 0


def _setting(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise AblateError(f"--model {text!r}: expected KEY=VALUE, e.g. --model n_layers=2")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise AblateError(f"--model {text!r}: the value is not valid YAML") from None


def sample_command(args) -> int:
    started = time.perf_counter()
    if args.temperature < 0:
        raise AblateError(f"--temperature must be 0 or more, got {args.temperature}")
    where = stored(args)
    import tempfile

    from ablate.inference import sample
    from ablate.tracking import store

    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = sample.load(store.client(where), args.run_id, Path(tmp))
    prompt = sample.prompt_ids(tokenizer, args.prompt)
    if max(prompt) >= model.cfg.vocab_size or min(prompt) < 0:
        raise AblateError(f"--prompt: token ids must lie in 0..{model.cfg.vocab_size - 1}")
    reach, why = model.state_reach()
    if args.recompute:
        print("sample: recomputing the forward for every token (--recompute)", file=sys.stderr)
    elif len(prompt) + args.tokens - 1 > reach:
        print(f"sample: {why}: past position {reach} each token recomputes the forward", file=sys.stderr)
    ready = time.perf_counter()
    ids = sample.generate(model, prompt, args.tokens, args.temperature, args.top_k, args.seed, args.recompute)
    done = time.perf_counter()
    print(
        f"sample: loading the model took {ready - started:.1f}s, then {len(ids)} tokens "
        f"{done - ready:.2f}s ({1000 * (done - ready) / len(ids):.1f} ms a token)",
        file=sys.stderr,
    )
    text = tokenizer.decode(ids) if tokenizer is not None else " ".join(map(str, ids))
    if args.json:
        print(json.dumps({"prompt_ids": prompt, "generated_ids": ids, "text": text}))
    else:
        print(args.prompt + (text if tokenizer is not None else " " + text))
    return 0


def import_command(args) -> int:
    from ablate.run import evaluations

    check_writable(args.results)
    experiment = args.study or f"{args.kind}-imports"
    run_id = evaluations.import_checkpoint(uri(args), args.results, args.kind, args.checkpoint, experiment)
    print(f"imported {args.checkpoint} as run {run_id} in experiment {experiment}")
    print(f"next: ablate eval {run_id} --data STUDY.yaml|TOKENS.bin{store_hint(args)}")
    return 0


def export_command(args) -> int:
    from ablate.run import evaluations
    from ablate.tracking import store

    evaluations.export_run(store.client(stored(args)), args.run_id, args.folder, args.force)
    print(f"exported run {args.run_id} to {args.folder}")
    print(f"next: AutoModelForCausalLM.from_pretrained({str(args.folder)!r}, trust_remote_code=True)")
    return 0


def variants_command(args) -> int:
    from ablate.mixers import registry

    rows = [
        {"name": n, "description": cls.description, "cannot_decode": cls.cannot_decode}
        for n, cls in ((n, registry.mixer_class(n)) for n in registry.variants())
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            note = f" (cannot decode from a state: {r['cannot_decode']})" if r["cannot_decode"] else ""
            print(f"{r['name']:<{width}}  {r['description']}{note}")
    return 0
