"""Commands that score a trained model: eval (val loss and accuracy, its causality audit, its loss
at other lengths, or lm-evaluation-harness's tasks), each logged to MLflow."""

import json
from pathlib import Path

from ablate.cli.common import contexts, positive, store_options, stored
from ablate.core.errors import AblateError


def add_commands(sub) -> None:
    _eval_parser(sub)


def _eval_parser(sub) -> None:
    evaluate = sub.add_parser(
        "eval",
        help="val loss and accuracy of a run's model, its causality audit and, if it leaks, its honest prefix loss",
    )
    evaluate.add_argument("run_id", help="a finished final trial's or an imported checkpoint's MLflow run id")
    evaluate.add_argument(
        "--data",
        metavar="STUDY_YAML_OR_TOKENS",
        help="a study YAML (its data: corpus or task) or a token array (.npy, .bin); default: the run's own study's data",
    )
    evaluate.add_argument("--batch-size", type=positive, default=16, help="sequences per val batch (default 16)")
    evaluate.add_argument("--batches", type=positive, default=20, help="val batches (default 20)")
    evaluate.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when there is one (default: auto)"
    )
    evaluate.add_argument(
        "--lm-eval",
        type=tasks,
        metavar="TASKS",
        help="run lm-evaluation-harness on these tasks (comma-separated) instead, logging lm_eval/TASK/METRIC to the run",
    )
    evaluate.add_argument("--limit", type=positive, help="with --lm-eval: the first N documents of each task")
    evaluate.add_argument(
        "--include-path", type=Path, help="with --lm-eval: a folder of task YAMLs of your own (their data files inside)"
    )
    evaluate.add_argument(
        "--contexts",
        type=contexts,
        metavar="LENGTHS",
        help="score the model at these lengths instead (256,1k,4k), past its training context too, "
        "logging val_loss_at/T to the run (a task's run: val_accuracy_at/T and val_exact_at/T)",
    )
    evaluate.add_argument("--json", action="store_true", help="the metrics and the evaluation run id as JSON")
    store_options(evaluate)
    evaluate.set_defaults(func=eval_command)


def tasks(text: str) -> list[str]:
    """arc_easy,piqa: lm-eval task names."""
    import argparse

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one task: --lm-eval arc_easy,piqa")
    return names


def eval_command(args) -> int:
    where = stored(args)
    import tempfile

    from ablate.run import evaluations
    from ablate.tracking.store import Tracker

    if args.lm_eval is None and (args.limit or args.include_path):
        raise AblateError("--limit and --include-path go with --lm-eval")
    if args.lm_eval is not None and args.data is not None:
        raise AblateError("--lm-eval scores the harness's own tasks, not --data: give one of them")
    if args.lm_eval is not None and args.contexts is not None:
        raise AblateError("--lm-eval and --contexts are two evaluations: give one of them")
    tracker = Tracker(where, args.results)
    if args.lm_eval is not None:
        return _lm_eval(args, tracker)
    if args.contexts is not None:
        return _lengths(args, tracker)
    model = evaluations.load_model(tracker.client, args.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = evaluations.eval_data(
            tracker.client, args.run_id, args.data, model.cfg.vocab_size, args.results, Path(tmp)
        )
    metrics = evaluations.score(model, corpus, args.batch_size, args.batches, args.device)
    params = {"data.source": corpus.meta.source, "data.fingerprint": corpus.meta.fingerprint}
    params |= {"batch_size": str(args.batch_size), "batches": str(args.batches)}
    eval_id = evaluations.log_evaluation(tracker, args.run_id, metrics, params)
    if args.json:
        print(json.dumps({"run_id": args.run_id, "evaluation_run_id": eval_id, **metrics}))
    else:
        print(corpus.describe())
        evaluations.print_result(metrics)
        print(f"logged as evaluation run {eval_id}, nested under run {args.run_id}")
    return 0


def _lengths(args, tracker) -> int:
    """The run's model scored at each length, logged on the run itself."""
    import tempfile

    from ablate.core.schema import Tag
    from ablate.inference import lengths
    from ablate.nn.devices import device_named
    from ablate.run import evaluations

    model = evaluations.load_model(tracker.client, args.run_id).to(device_named(args.device))
    lengths.reach(model, args.contexts)  # a model that leaks is refused before its data is built
    with tempfile.TemporaryDirectory() as tmp:
        data = evaluations.eval_data(
            tracker.client, args.run_id, args.data, model.cfg.vocab_size, args.results, Path(tmp)
        )
    batch_tokens = args.batch_size * model.cfg.context
    metrics, kept, stopped = lengths.scores(model, data, args.contexts, batch_tokens, args.batches)
    tracker.log_final(args.run_id, metrics)
    tracker.tag(args.run_id, {Tag.LENGTH_METHOD: lengths.METHOD} | ({Tag.LENGTH_STOPPED: stopped} if stopped else {}))
    if args.json:
        print(json.dumps({"run_id": args.run_id, **metrics, "stopped": stopped}))
    else:
        lengths.print_table(metrics, kept, model.cfg.context, stopped)
        print(f"logged on run {args.run_id}")
    return 0


def _lm_eval(args, tracker) -> int:
    """lm-evaluation-harness's metrics for the run's model, logged on the run itself."""
    import tempfile

    from ablate.inference import harness, sample
    from ablate.nn.devices import device_named

    with tempfile.TemporaryDirectory() as tmp:
        model, _ = sample.load(tracker.client, args.run_id, Path(tmp))
        metrics = harness.lm_eval_scores(
            model,
            sample.tokenizer_file(Path(tmp)),
            args.lm_eval,
            args.include_path,
            args.limit,
            device_named(args.device),
        )
    tracker.log_final(args.run_id, metrics)
    if args.json:
        print(json.dumps({"run_id": args.run_id, **metrics}))
    else:
        for name, value in metrics.items():
            print(f"{name} {value:.4f}")
        print(f"logged on run {args.run_id}")
    return 0
