"""Ensemble adversarial training (EAT) against adversarial networks, paper Table 4.

For each data set: take the undefended model A of that data set's run (trained with the data set's
script settings if its checkpoint is missing), build the static EAT training set from A (FGS with A's
predicted label, PGD, least-likely-class FGS, plus the clean images: 4x the training set, or of its first eat_n images), train the
EAT model on it with the data set's D and schedule, and evaluate the 9 columns (white box; black box
from the data set's A', B', C'). Prints the EAT row beside the adversarial-network row (C) and the
paper's; writes results/ensemble.json (one entry per data set, earlier entries kept), or with --protocol
authors (each data set's authors' settings, the EAT set crafted with batch statistics) results/ensemble_authors.json.

    python ensemble.py --gpu 0                          # MNIST, SVHN and CIFAR-10
    python ensemble.py --datasets fashion_mnist --iters 1000 --set g_width=8
    python ensemble.py --quick --datasets mnist
    python ensemble.py --datasets fashion_mnist --iters 1000 --set g_width=8 --strong-eval --eval-n 1000
"""
import os
import time

import torch

import cifar10
import core
import mnist
import runner.autoattack_suite
import runner.checkpoints
import runner.cli
import runner.errors
import runner.evaluation
import runner.files
import runner.jobs
import runner.progress
import runner.provenance
import runner.reports
import runner.running
import runner.settings
import runner.training
import svhn

DATASETS = {  # name -> (script, paper table, (args -> (name, settings, load)))
    "mnist": (mnist, "mnist", lambda args: mnist.configure(args)),
    "fashion_mnist": (mnist, "mnist", lambda args: mnist.configure(args, fashion=True)),
    "svhn": (svhn, "svhn", svhn.configure),
    "cifar10": (cifar10, "cifar10", cifar10.configure),
}
NEEDED = ["A", "C", "A'", "B'", "C'"]  # A makes the EAT set, C is the comparison row, the rest attack


def build_eat_set(model, images, labels, settings, device, progress=None):
    """core.build_eat_set with the run's settings (`eat_bn`: A's batch norm while it crafts). Its PGD starts are drawn from the run's seed, apart from the
    global RNG: a resumed run, which builds the set again, gets the very set the interrupted one trained on,
    and the RNG state its checkpoint restored (CIFAR's EAT draws its augmentation from it) stays untouched."""
    batch = settings["batch_size"] if settings["eat_bn"] == "batch" else settings["eval_batch"]  # batch statistics: of minibatches
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings["seed"])
        return core.build_eat_set(model, images, labels, settings["eps"], device, batch, settings["pgd_steps"],
                                  settings["pgd_alpha"] or None, progress, settings["precision"], settings["eat_bn"])


def planned_models(settings):
    """name -> (method, seed) of the models run_dataset prepares: NEEDED, then EAT."""
    return ({m: (runner.settings.METHODS[m.rstrip("'")], settings["seed"] + m.count("'")) for m in NEEDED}
            | {"EAT": ("eat", settings["seed"])})


def planned_specs(key, args):
    """The data set's settings and its planned models as runner.training specs, name -> (method, seed,
    checkpoint path, train), in training order. The checkpoints are the data set's own: its models are reused."""
    name, settings, _ = DATASETS[key][2](args)
    ckpt_dir = os.path.join(args.ckpt_dir or "checkpoints", name)
    return settings, {model_name: (method, seed, os.path.join(ckpt_dir, f"{model_name}.pt"), True)
                      for model_name, (method, seed) in planned_models(settings).items()}


def check_dataset_run(key, args):
    """What run_dataset will read, checked before any data set's training: its settings (the strong
    evaluation's batches among them), and every checkpoint it will resume or load
    (runner.checkpoints.checked_checkpoint)."""
    settings, specs = planned_specs(key, args)
    if settings["val_n"]:
        raise runner.errors.UserError("ensemble.py: val_n would hold images out of the models' training but not out of the "
                                   "EAT set built from them; run it without val_n (and eval_every)")
    for method, seed, path, _ in specs.values():
        if os.path.exists(path):
            runner.checkpoints.checked_checkpoint(path, settings, method, seed)
    if args.strong_eval:
        runner.evaluation.strong_chunk(settings)
        runner.files.check_writable(os.path.dirname(specs["EAT"][2]), "--ckpt-dir")  # where its state is kept


def iterations_to_train(key, args):
    """name -> the iterations still to train of each of the data set's planned models, in training order."""
    settings, specs = planned_specs(key, args)
    return runner.training.iterations_left(specs, settings)


def run_dataset(key, args, device, out, later):
    """The data set's entry. `later`: name -> the iterations the whole run trains after that model (its ETA)."""
    script, paper_key, configure = DATASETS[key]
    name, settings, load = configure(args)
    provenance = runner.provenance.provenance(device, runner.provenance.command_line(args), settings["precision"])
    ckpt_dir = os.path.join(args.ckpt_dir or "checkpoints", name)
    train_x, train_y, test_x, test_y = load()
    print(runner.running.study_banner(
        name, settings, device, f"{key}: train or load {', '.join(NEEDED)} ({runner.running.iterations_text(settings, NEEDED)}), "
        "craft the EAT set from A, train EAT, score EAT beside C", ckpt_dir, out, args.quick))
    models, generators, records = {}, {}, {}
    for model_name in NEEDED:
        method, seed = planned_models(settings)[model_name]
        models[model_name], generators[model_name], records[model_name] = runner.training.prepare_model(
            model_name, method, seed, settings, script.build_D, script.build_G,
            lambda: (train_x, train_y), device, os.path.join(ckpt_dir, f"{model_name}.pt"), later=later[model_name])
    source_x, source_y = train_x[:settings["eat_n"] or len(train_x)], train_y[:settings["eat_n"] or len(train_x)]
    eat_info = {"n_images": 4 * len(source_x), "kinds": core.EAT_KINDS, "seconds": None}  # None: built by an earlier run

    def eat_data():
        t0 = time.time()
        eat_set = build_eat_set(models["A"], source_x, source_y, settings, device,
                                runner.progress.Progress(len(source_x), f"{key}: EAT set from A", "img"))
        eat_info.update(n_images=len(eat_set), seconds=round(time.time() - t0, 1))
        return eat_set, eat_set.labels

    eat, _, eat_record = runner.training.prepare_model("EAT", "eat", settings["seed"], settings, script.build_D, script.build_G,
                                            eat_data, device, os.path.join(ckpt_dir, "EAT.pt"), later=later["EAT"])
    scored = {"EAT": eat, "C": models["C"], **{k: models[k] for k in ("A'", "B'", "C'")}}
    table, evaluation = runner.evaluation.evaluate_trained(scored, settings, test_x, test_y, device,
                                                                  ckpt_dir if args.strong_eval else None)
    paper = runner.reports.paper_rows(paper_key)
    print(f"{key}, {settings['protocol']} protocol" + (" (paper rows: MNIST)" if key == "fashion_mnist" else ""))
    print(runner.reports.format_table(table, {r: paper[r] for r in ("EAT", "C")} if paper else None))
    entry = {"settings": settings, "checkpoints": ckpt_dir, "provenance": provenance,
             "seeds": {"EAT": settings["seed"]}, "models": {"EAT": eat_record}, "eat_set": eat_info,
             "table": table, "eval": evaluation}
    if args.strong_eval:
        entry["strong_eval"] = runner.evaluation.strong_eval_report(scored, generators["C"], settings, test_x, test_y, device,
                                                             runner.autoattack_suite, ckpt_dir)
    return entry


def main(argv=None):
    parser = runner.cli.experiment_parser(__doc__, models=False)
    parser.add_argument("--datasets", default="mnist,svhn,cifar10", help=f"comma-separated, from {', '.join(DATASETS)}")
    args = runner.cli.parse_cli(parser, argv, __file__)
    if args.slurm is not None:  # the whole script as one job
        return runner.jobs.launch_script(args, args.ckpt_dir or "checkpoints")
    keys = [k.strip() for k in args.datasets.split(",") if k.strip()]
    unknown = [k for k in keys if k not in DATASETS]
    if unknown or not keys:
        raise runner.errors.UserError(f"--datasets {args.datasets}: choose from {', '.join(DATASETS)}")
    device = runner.cli.pick_device(args.gpu)
    name = runner.settings.run_name("ensemble", args)
    out = args.out or os.path.join("results", name + ".json")
    runner.files.check_out_file(out)
    read_entries(out, args.protocol)  # a file of another kind or protocol stops the run before any training
    for key in keys:
        check_dataset_run(key, args)
    runner.files.check_writable(args.ckpt_dir or "checkpoints", "--ckpt-dir")
    left = {key: iterations_to_train(key, args) for key in keys}
    entries = {}
    for i, key in enumerate(keys):
        t0 = time.time()
        beyond = sum(sum(left[after].values()) for after in keys[i + 1:])
        later = runner.training.iterations_after_each(left[key], beyond)
        entries[key] = run_dataset(key, args, device, out, later) | {"wall_seconds": round(time.time() - t0, 1)}
    with runner.files.merge_lock(out):  # one entry per data set: the entries other runs wrote meanwhile are kept
        report = {"experiment": name, "protocol": args.protocol, "datasets": read_entries(out, args.protocol) | entries,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        runner.files.write_json(out, report)
    print(f"results written to {out}")
    return report


def read_entries(out, protocol):
    """The data sets' entries that `out` holds ({} if there is no such file), all of `protocol`."""
    report = runner.files.read_results(out)
    if report is None:
        return {}
    entries = report.get("datasets") if isinstance(report, dict) else None
    if not isinstance(entries, dict) or not all(isinstance(entry, dict) for entry in entries.values()):
        raise runner.errors.UserError(f"{out} is not an ensemble results file (no datasets object of entries); move it away "
                                   "or pass --out")
    if report.get("protocol", "paper") != protocol:  # files older than the protocols are the paper's
        raise runner.errors.UserError(f"{out} holds results of the {report.get('protocol', 'paper')} protocol, not "
                                   f"{protocol}; pass another --out")
    for dataset, entry in entries.items():
        problem = runner.files.shape_problem(entry)
        if problem:
            raise runner.errors.UserError(f"{out} is damaged (datasets.{dataset}: {problem}); move it away, or pass "
                                          "another --out")
    return entries


if __name__ == "__main__":
    runner.errors.exit_on_error(main)
