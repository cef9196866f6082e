"""The results as text tables: ours beside the paper's (whose numbers are in paper_tables.json), the
mean ± standard deviation of every cell over --seeds, and the strong evaluation's accuracy per attack.
Pure functions of the results' dicts; they import nothing of this repository."""
import json
import math
import os

TABLE_COLUMNS = ["clean", "fgs", "pgd", "fgs_A'", "pgd_A'", "fgs_B'", "pgd_B'", "fgs_C'", "pgd_C'"]  # the paper's order


def paper_tables(section):
    """A section of paper_tables.json (kept beside this file), or None where the file is absent."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "paper_tables.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)[section]


def paper_rows(table):
    """The paper's rows of one of its accuracy tables (e.g. "cifar10"), or None."""
    tables = paper_tables("tables")
    return tables[table]["rows"] if tables else None


def eps_text(eps):
    """eps as a person reads it: with its fraction of 255 (or the paper's 256) where it is a whole number of them."""
    for denominator in (255, 256):
        if eps < 1 and abs(eps * denominator - round(eps * denominator)) < 1e-9:
            return f"{eps:.4g} ({round(eps * denominator)}/{denominator})"
    return f"{eps:g}"


def table_caption(n, eps, protocol, bn, quick=False):
    """What the numbers of a printed table are: their unit, how many test images were scored, eps and
    protocol; a --quick table says that it is a smoke test."""
    caption = (f"accuracy in percent on n = {n} test images, eps {eps_text(eps)}, {protocol} protocol, "
               f"batch norm {bn} when scoring")
    return caption + ("\n--quick: a smoke test of the pipeline, not a result" if quick else "")


def format_table(table, paper=None):
    """Our accuracies, and the paper's beside them where given ({row: [values in column order]})."""
    width = max([8] + [len(row) + 1 for row in table])
    return "\n".join(table_rows(table, lambda v: f"{v:.2f}", width, 9, paper))


def table_rows(table, cell, label_width, cell_width, paper=None):
    """The lines of a table in the paper's columns: a header, then each row (its cells through `cell`,
    '-' where it has none) and the paper's row below it where `paper` has one."""
    lines = [f"{'model':<{label_width}}" + "".join(f"{c:>{cell_width}}" for c in TABLE_COLUMNS)]
    for row, values in table.items():
        lines.append(f"{row:<{label_width}}" + "".join(f"{cell(values[c]) if c in values else '-':>{cell_width}}"
                                                       for c in TABLE_COLUMNS))
        if paper and row in paper:
            lines.append(f"{'  paper':<{label_width}}" + "".join(f"{v:>{cell_width}.2f}" for v in paper[row]))
    return lines


def seed_statistics(tables):
    """{seed: table} -> row -> column -> {mean, std, n} over the seeds whose table has that cell; std is
    the sample standard deviation (divisor n - 1), None where n is 1."""
    cells = {}
    for table in tables.values():
        for row, values in table.items():
            for column, value in values.items():
                cells.setdefault(row, {}).setdefault(column, []).append(value)
    return {row: {column: mean_std(values) for column, values in columns.items()} for row, columns in cells.items()}


def mean_std(values):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def format_statistics(stats, paper=None):
    """The across-seed table: mean ± standard deviation of every cell (n seeds), and the paper's rows where given."""
    cell = lambda c: f"{c['mean']:.2f}±{c['std']:.2f}" if c["std"] is not None else f"{c['mean']:.2f}"
    ns = sorted({c["n"] for cols in stats.values() for c in cols.values()})
    return "\n".join([f"mean ± standard deviation over the seeds (n = {', '.join(map(str, ns))}), accuracy in percent"]
                     + table_rows(stats, cell, 8, 14, paper))


def format_strong(report):
    """The strong evaluation as text: one row per attack (accuracy in percent), then each model's masking flags."""
    models = report["models"]
    keys = list(next(iter(models.values()))["accuracy"])
    lines = [f"strong evaluation, first {report['n_test']} test images, BN {report['bn']}: accuracy in percent",
             f"{'attack':<22}" + "".join(f"{m:>9}" for m in models)]
    lines += [f"{k:<22}" + "".join(f"{r['accuracy'][k]:>9.2f}" for r in models.values()) for k in keys]
    for name, r in models.items():
        flags = [f"{c} ({v['why']})" for c, v in r["checks"].items() if v["flag"]]
        lines.append(f"masking flags of {name}: {'; '.join(flags) if flags else 'none'}")
        lines += [f"AutoAttack's warning on {name}: {w}" for w in r.get("autoattack_warnings", [])]
    return "\n".join(lines)
