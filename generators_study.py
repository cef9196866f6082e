"""The generator study on CIFAR-10, paper Tables 5 and 6.

Table 5: train each generator (G1 k=8, G1 k=64, G2 from Gaussian z, G3 from the label) against the
fixed undefended model A (SGD lr 0.01, momentum 0.9), then score A, A', B and C on x + eps*G(.).
Table 6: co-train D2 with each generator exactly as cifar10.py's model C (G1 k=64 is that C), and
score clean, FGS, PGD and black-box FGS/PGD from A' and B'. Uses cifar10.py's checkpoints and trains
the missing ones. Writes results/generators.json and a few example perturbations per generator
(clean image, eps*G(x), perturbed image) to results/generators_examples.npz.

    python generators_study.py --gpu 0
    python generators_study.py --quick
"""
import os
import time

import numpy as np
import torch

import cifar10
import core
import runner.autoattack_suite
import runner.cli
import runner.errors
import runner.evaluation
import runner.files
import runner.jobs
import runner.provenance
import runner.reports
import runner.running
import runner.settings
import runner.training

GENERATORS = {  # name in paper_tables.json -> builder from the CIFAR-10 settings (G1: the protocol's, cifar10.build_G)
    "G1_k8": lambda s: cifar10.build_G(s | {"g_width": 8}),
    "G1_k64": cifar10.build_G,
    "G2_gaussian": lambda s: core.G2(k=s["g_width"], channels=3, size=32),
    "G3_label": lambda s: core.G3(k=s["g_width"], channels=3, size=32, n_classes=s["n_classes"]),
}
ATTACK_TRAINING = dict(g_opt="sgd", g_lr=0.01)   # Table 5's generators: SGD, lr 0.01, momentum 0.9 (g_momentum)
N_EXAMPLES = 8                                   # example perturbations saved per generator


def main(argv=None):
    args = runner.cli.parse_cli(runner.cli.experiment_parser(__doc__, models=False), argv, __file__)
    if args.slurm is not None:  # the whole script as one job
        return runner.jobs.launch_script(args, args.ckpt_dir or "checkpoints")
    name, settings, load = cifar10.configure(args)
    if settings["protocol"] == "authors":
        settings["protocol_source"] += "; Tables 5 and 6 have no authors' code: only the CIFAR-10 models they reuse follow it"
    device = runner.cli.pick_device(args.gpu)
    cifar_dir = os.path.join(args.ckpt_dir or "checkpoints", name)
    study_name = runner.settings.run_name("generators", args)
    study_dir = os.path.join(args.ckpt_dir or "checkpoints", study_name)
    out = args.out or os.path.join("results", study_name + ".json")
    for folder in (cifar_dir, study_dir):  # before hours of training, not after
        runner.files.check_writable(folder, "--ckpt-dir")
    if args.strong_eval:
        runner.evaluation.strong_chunk(settings)
    runner.files.check_results_file(out, study_name)
    runner.files.check_out_file(examples_file(out))
    train_x, train_y, test_x, test_y = load()
    cifar_models = ["A", "A'", "B", "B'", "C"]
    print(runner.running.study_banner(
        study_name, settings, device, f"train or load CIFAR-10's {', '.join(cifar_models)} "
        f"({runner.running.iterations_text(settings, cifar_models)}), then the generators {', '.join(GENERATORS)} against "
        "A (Table 5) and their transfer (Table 6)", f"{cifar_dir}, {study_dir}", out, args.quick))
    data = lambda: (train_x, train_y)
    n = settings["test_n"] or len(test_x)
    test_x, test_y = test_x[:n], test_y[:n]
    started = time.time()

    plan = planned_models(settings, cifar_models, cifar_dir, study_dir)
    later = runner.training.iterations_after_each(iterations_to_train(plan))

    def prepare(label, build_D, build_G):
        method, seed, model_settings, path = plan[label]
        return runner.training.prepare_model(label, method, seed, model_settings, build_D, build_G, data, device, path,
                                             later=later[label])

    fixed = {m: prepare(m, cifar10.build_D, cifar10.build_G) for m in cifar_models}
    targets = {m: fixed[m][0] for m in ("A", "A'", "B", "C")}
    report = {"experiment": study_name, "protocol": settings["protocol"], "settings": settings, "attack_training": ATTACK_TRAINING,
              "provenance": runner.provenance.provenance(device, runner.provenance.command_line(args), settings["precision"]), "n_test": n, "models": {}}

    # ------------------------------------------------------------- Table 5: generators against fixed A
    table5, examples = {}, {}
    for g_name, build in GENERATORS.items():
        _, G, record = prepare(f"{g_name} vs A", lambda s: targets["A"], build)
        report["models"][f"{g_name}_vs_A"] = record
        with core.scoring_mode([G]), core.full_precision(device):
            attack = lambda x, y: core.generator_attack(G, x, y, settings["eps"])
            table5[g_name] = core.transfer_accuracy(targets, attack, test_x, test_y, settings["eps"], device,
                                                    settings["eval_batch"])
            x, y = core.to_float(test_x[:N_EXAMPLES].to(device)), test_y[:N_EXAMPLES].to(device)
            with torch.no_grad():  # one draw of G's input (G2's z is random): the three images belong together
                perturbation = settings["eps"] * G(G.inputs(x, y))
        examples |= {f"{g_name}_clean": x, f"{g_name}_perturbation": perturbation,
                     f"{g_name}_perturbed": (x + perturbation).clamp(0, 1)}

    # ------------------------------------------------------------- Table 6: D2 co-trained with each generator
    cotrained = {}
    for g_name, build in GENERATORS.items():
        if g_name == "G1_k64":  # cifar10.py's model C
            cotrained[g_name], report["models"]["C_G1_k64"] = fixed["C"][0], fixed["C"][2]
        else:
            cotrained[g_name], _, report["models"][f"C_{g_name}"] = prepare(f"C with {g_name}", cifar10.build_D, build)
    with_copies = cotrained | {"A'": fixed["A'"][0], "B'": fixed["B'"][0]}
    table6, evaluation = runner.evaluation.evaluate_trained(with_copies, settings, test_x, test_y, device,
                                                                   study_dir if args.strong_eval else None)
    if args.strong_eval:  # the co-trained models, attacked by transfer from A' and B' and by C's generator
        report["strong_eval"] = runner.evaluation.strong_eval_report(with_copies, fixed["C"][1], settings, test_x, test_y, device,
                                                              runner.autoattack_suite, study_dir)

    report |= {"table5": table5, "table6": table6, "eval": evaluation,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": round(time.time() - started, 1)}
    examples_path = examples_file(out)
    report["examples"] = os.path.basename(examples_path)
    arrays = {k: v.float().cpu().numpy() for k, v in examples.items()}
    runner.files.write_atomically(examples_path, lambda tmp: save_npz(tmp, arrays))
    runner.files.write_json(out, report)
    print_tables(table5, table6)
    print(f"results written to {out} and {examples_path}")
    return report


def planned_models(settings, cifar_models, cifar_dir, study_dir):
    """The models the study trains or loads, in its order: label -> (method, seed, settings, checkpoint path)."""
    seed = settings["seed"]
    return ({m: (runner.settings.METHODS[m.rstrip("'")], seed + m.count("'"), settings, os.path.join(cifar_dir, f"{m}.pt"))
             for m in cifar_models}
            | {f"{g} vs A": ("generator", seed, settings | ATTACK_TRAINING | {"generator": g}, os.path.join(study_dir, f"{g}_vs_A.pt"))
               for g in GENERATORS}
            | {f"C with {g}": ("advnet", seed, settings | {"generator": g}, os.path.join(study_dir, f"C_{g}.pt"))
               for g in GENERATORS if g != "G1_k64"})  # G1 k=64 co-trained is cifar10.py's C


def iterations_to_train(plan):
    """label -> the iterations still to train of each planned model (each under its own settings)."""
    return {label: runner.training.model_iterations_left(method, path, True, model_settings)
            for label, (method, _, model_settings, path) in plan.items()}


def examples_file(out):
    """Where the example perturbations go, beside the results file `out`."""
    return os.path.splitext(out)[0] + "_examples.npz"


def save_npz(path, arrays):
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a temporary name
        np.savez_compressed(f, **arrays)


def print_tables(table5, table6):
    paper5, paper6 = runner.reports.paper_tables("generator_attack"), runner.reports.paper_tables("generator_cotrain")
    print("Table 5: accuracy under each generator's attack (paper in brackets)")
    targets = ["A", "A'", "B", "C"]
    print(f"{'generator':<13}" + "".join(f"{t:>16}" for t in targets))
    for i, (g_name, row) in enumerate(table5.items()):
        print(f"{g_name:<13}" + "".join(f"{row[t]:>8.2f} ({paper5['targets'][t][i]:5.2f})" if paper5 else f"{row[t]:>16.2f}"
                                        for t in targets))
    print("Table 6: adversarial networks co-trained with each generator")
    print(runner.reports.format_table(table6, paper6["rows"] if paper6 else None))


if __name__ == "__main__":
    runner.errors.exit_on_error(main)
