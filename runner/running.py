"""Running a data set's experiment: its models and seeds trained or loaded, evaluated, and the results
JSON written (or the work launched as jobs)."""
import os
import time

import core
from runner import jobs, reports
from runner.checkpoints import checked_checkpoint
from runner.cli import experiment_parser, parse_cli, parse_models, parse_seeds, pick_device
from runner.errors import UserError
from runner.evaluation import evaluate_trained, strong_chunk, strong_eval_report
from runner.files import check_results_file, check_writable, write_json
from runner.provenance import command_line, device_name, provenance
from runner.settings import METHODS, model_settings, resolve_settings, run_name
from runner.training import check_device, iterations_after_each, iterations_left, prepare_models


def configure_with(name, settings, load_data, authors=None):
    """The configure(args) of a script whose data need only --data-dir: args -> (name, settings, load)."""
    def configure(args):
        resolved = resolve_settings(settings, args, authors=authors)
        return run_name(name, args), resolved, lambda: load_data(args.data_dir)
    return configure


def dataset_main(doc, script, configure, build_D, build_G, paper_table, autoattack=None, argv=None):
    """The whole command of a data-set script: parse its command line, then run_experiment."""
    args = parse_cli(experiment_parser(doc), argv, script)
    name, settings, load = configure(args)
    return run_experiment(name, settings, args, load, build_D, build_G, reports.paper_rows(paper_table), autoattack)


def run_experiment(name, settings, args, load_data, build_D, build_G, paper=None, autoattack=None):
    """Trains the chosen models (resumably), evaluates the 9-column table (and with --strong-eval the
    strong evaluation) and writes the results JSON; with --seeds, once per seed, and the JSON adds the
    mean, standard deviation and n of every cell. With --slurm or --gpu 0,1,... the trainings and the
    evaluation run as jobs instead (jobs.launch_experiment).

    `load_data()` gives (train_images, train_labels, test_images, test_labels): uint8 (N, C, H, W)
    and int64. Models outside --models are not trained, but their finished checkpoints are evaluated.
    `autoattack` (the module autoattack_suite) adds AutoAttack to --strong-eval."""
    seeds = parse_seeds(args.seeds)
    chosen = [] if args.eval_only else parse_models(args.models)
    ckpt_dir = args.ckpt_dir or os.path.join("checkpoints", name)
    out = args.out or os.path.join("results", f"{name}.json")
    check_run(name, settings, args, seeds, chosen, ckpt_dir, out)
    if args.slurm is not None or len(jobs.parse_gpus(args.gpu)) > 1:
        return jobs.launch_experiment(args, seeds or [settings["seed"]], chosen, ckpt_dir)
    device = pick_device(args.gpu)
    check_device(settings, device)
    data = load_data()  # checked first: a user error stays the one line on stderr
    print(banner(name, settings, args, device, chosen, seeds, ckpt_dir, out))  # stdout, beside the table: stderr
    # keeps progress and a user error's one line (a model locked by another process is found after this)
    started = time.time()
    later = iterations_after(settings, seeds, ckpt_dir, chosen)
    runs = {seed: run_seed(name, settings | {"seed": seed}, args, data, build_D, build_G, device,
                           os.path.join(ckpt_dir, f"seed{seed}"), chosen, paper, autoattack, later[seed])
            for seed in seeds} if seeds else {None: run_seed(name, settings, args, data, build_D, build_G, device,
                                                             ckpt_dir, chosen, paper, autoattack)}
    if args.no_eval:
        return runs
    if seeds:
        report = {"experiment": name, "protocol": settings["protocol"], "settings": settings,
                  "provenance": provenance(device, command_line(args), settings["precision"]), "seed_list": seeds, "runs": {str(seed): run for seed, run in runs.items()}}
        report["table_stats"] = reports.seed_statistics({seed: run["table"] for seed, run in runs.items()})
        report["table"] = {row: {col: cell["mean"] for col, cell in cols.items()} for row, cols in report["table_stats"].items()}
        report |= {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": round(time.time() - started, 1)}
        print(reports.table_caption(next(iter(runs.values()))["eval"]["n_test"], settings["eps"], settings["protocol"],
                                    settings["bn_eval"], args.quick))
        print(reports.format_statistics(report["table_stats"], paper))
    else:
        report = runs[None]
    write_json(out, report)
    print(f"results written to {out}")
    return report


def check_run(name, settings, args, seeds, chosen, ckpt_dir, out):
    """What a run will read and write, checked before it trains or scores anything: every checkpoint it
    will load (checked_checkpoint), a target model (A, B or C) to evaluate unless --no-eval, and the
    folders it writes to. So a mistake costs no training, and a run with nothing to score keeps `out`."""
    rows = set()  # the models the results will hold
    for seed in seeds or [None]:
        s, folder = (settings, ckpt_dir) if seed is None else (settings | {"seed": seed}, os.path.join(ckpt_dir, f"seed{seed}"))
        specs = model_specs(s, folder, chosen)
        finished = [model for model, (method, model_seed, path, _) in specs.items() if os.path.exists(path) and
                    checked_checkpoint(path, s, method, model_seed)["record"]["iters_done"] >= model_settings(s, method)["iters"]]
        if not args.no_eval and not {"A", "B", "C"} & set(chosen + finished):
            raise UserError(f"nothing to evaluate: {folder} holds no finished checkpoint of A, B or C"
                            + ("" if args.eval_only else ", and --models trains none of them")
                            + f" (is --ckpt-dir right?); {out} is left as it is")
        rows |= {"A", "B", "C"} & set(chosen + finished)
    if not args.no_eval:
        check_no_less(name, out, settings, args, seeds, rows)
    if not args.eval_only or args.strong_eval:  # the strong evaluation keeps its state beside the checkpoints
        check_writable(ckpt_dir, "--ckpt-dir")
    if args.strong_eval and not args.no_eval:
        strong_chunk(settings)


def banner(name, settings, args, device, chosen, seeds, ckpt_dir, out):
    """What a run will do, said before it starts: device and precision, protocol, the models and their
    iterations, where the checkpoints and the results go, and, for --quick, that it is a smoke test."""
    work = (f"train {', '.join(chosen)} ({iterations_text(settings, chosen)}; seed"
            f"{'s ' + ', '.join(map(str, seeds)) if seeds else ' ' + str(settings['seed'])}, the copies seed + 1); "
            "finished checkpoints are loaded, not retrained" if chosen
            else "train nothing (--eval-only): score the finished checkpoints")
    return study_banner(name, settings, device, work, ckpt_dir, "none (--no-eval)" if args.no_eval else out, args.quick)


def iterations_text(settings, models):
    """"200000 iterations each", or each model's where they differ (the protocols give models their own)."""
    iters = {m: model_settings(settings, METHODS[m.rstrip("'")])["iters"] for m in models}
    return (f"{next(iter(iters.values()))} iterations each" if len(set(iters.values())) == 1
            else ", ".join(f"{m} {n} iterations" for m, n in iters.items()))


def study_banner(name, settings, device, work, ckpt_dir, out, quick):
    """The banner of any run: its name, protocol, device and precision, the `work` it will do (a line),
    where checkpoints and results go, and for --quick that it is a smoke test. Under the paper's protocol
    it says which one reproduces the tables: a user who wants them should not learn it from the numbers."""
    lines = [f"{name}: {settings['protocol']} protocol on {device_name(device)}; training in "
             f"{core.precision_name(device, settings['precision'])}, scoring in float32", work,
             f"checkpoints: {ckpt_dir}; results: {out}"]
    if settings["protocol"] == "paper":
        lines.insert(1, "the paper's protocol follows its text; its tables came from the authors' code, which "
                        "--protocol authors follows (docs/protocols.md)")
    if quick:
        lines.append("--quick: a smoke test of the pipeline (a tiny schedule on a few test images): its numbers are not a result")
    return "\n".join(lines)


def iterations_after(settings, seeds, ckpt_dir, chosen):
    """seed -> the iterations still to train in the seeds after it (the ETA of a run over --seeds)."""
    if not seeds:
        return {}
    def seed_total(seed):
        specs = model_specs(settings | {"seed": seed}, os.path.join(ckpt_dir, f"seed{seed}"), chosen)
        return sum(iterations_left(specs, settings).values())
    return iterations_after_each({seed: seed_total(seed) for seed in seeds})


def less_than(earlier, settings, args, seeds, rows):
    """What the results file `earlier` holds that this run would not write, as short phrases: more test
    images, a strong evaluation (or one on more images), other seeds or other models."""
    runs = list(earlier.get("runs", {}).values()) if isinstance(earlier.get("runs"), dict) else [earlier]
    lost = []
    n, strong_n = settings["test_n"], settings["strong_n"]  # 0: the whole test set, which no earlier file exceeds
    if n and any(run.get("eval", {}).get("n_test", 0) > n for run in runs):
        lost.append(f"scores on more than {n} test images")
    strong = [run["strong_eval"] for run in runs if isinstance(run.get("strong_eval"), dict)]
    if strong and not args.strong_eval:
        lost.append("a strong evaluation (add --strong-eval)")
    elif strong_n and any(e.get("n_test", 0) > strong_n for e in strong):
        lost.append(f"a strong evaluation of more than {strong_n} images")
    earlier_seeds = set(earlier.get("seed_list") or [earlier.get("settings", {}).get("seed")]) - {None}
    other_seeds = sorted(earlier_seeds - set(seeds or [settings["seed"]]), key=str)
    if other_seeds:
        lost.append(f"seeds {', '.join(map(str, other_seeds))}")
    earlier_rows = {row for run in runs for row in run.get("table", {})}
    if earlier_rows - rows:
        lost.append(f"models {', '.join(sorted(earlier_rows - rows))}")
    return lost


def check_no_less(name, out, settings, args, seeds, rows):
    """The results file checked before training: its folder writable, the run's own (check_results_file),
    and never replaced by one that holds less: the run stops instead."""
    earlier = check_results_file(out, name)
    if earlier is None:
        return
    lost = less_than(earlier, settings, args, seeds, rows)
    if lost:
        raise UserError(f"{out} holds {'; '.join(lost)}, which this run would not write: pass another --out, "
                        "or move the file away to replace it")


def model_specs(settings, ckpt_dir, chosen):
    """The models a run prepares, those `chosen` to train and those with a checkpoint in `ckpt_dir`:
    name -> (method, seed, checkpoint path, whether to train it)."""
    specs = {}
    for model_name in ["A", "B", "C", "A'", "B'", "C'"]:
        ckpt_path = os.path.join(ckpt_dir, f"{model_name}.pt")
        if model_name in chosen or os.path.exists(ckpt_path):
            specs[model_name] = (METHODS[model_name.rstrip("'")], settings["seed"] + model_name.count("'"), ckpt_path,
                                 model_name in chosen)
    return specs


def run_seed(name, settings, args, data, build_D, build_G, device, ckpt_dir, chosen, paper, autoattack, later=0):
    """One run of the experiment with settings["seed"]: trains the chosen models, and unless --no-eval
    evaluates them; returns that run's report (the results JSON of a single-seed run). `later`: the
    iterations the run trains after this seed's."""
    train_x, train_y, test_x, test_y, *unused = data  # unused: val_from=unused's validation split, where there is one
    started = time.time()
    report = {"experiment": name, "protocol": settings["protocol"], "settings": settings, "seeds": {},
              "provenance": provenance(device, command_line(args), settings["precision"]),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "models": {}}
    finished, generators, specs = {}, {}, model_specs(settings, ckpt_dir, chosen)
    prepared = prepare_models(specs, settings, build_D, build_G, lambda: (train_x, train_y, *unused), device, later)
    for model_name, (D, G, record) in prepared.items():
        if record["iters_done"] >= settings["iters"]:
            report["seeds"][model_name] = specs[model_name][1]
            report["models"][model_name] = record
            finished[model_name], generators[model_name] = D, G
    if args.no_eval:
        print(f"trained {', '.join(finished) or 'nothing'}; checkpoints in {ckpt_dir}; run without --no-eval to evaluate")
        return report
    report["table"], report["eval"] = evaluate_trained(finished, settings, test_x, test_y, device,
                                                         ckpt_dir if args.strong_eval else None)
    print(f"seed {settings['seed']} (copies {settings['seed'] + 1}), "
          + reports.table_caption(report["eval"]["n_test"], settings["eps"], settings["protocol"], settings["bn_eval"],
                                  args.quick)
          + f"\n{reports.format_table(report['table'], paper)}")
    if args.strong_eval:
        report["strong_eval"] = strong_eval_report(finished, generators.get("C"), settings, test_x, test_y, device,
                                                   autoattack, ckpt_dir)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report["wall_seconds"] = round(time.time() - started, 1)
    return report
