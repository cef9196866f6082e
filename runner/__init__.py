"""The machinery that runs the experiments, one job per module; the method itself (networks, attacks,
training steps, evaluation) is in core.py. Bottom to top: errors (UserError, printed as one line by
exit_on_error), reports (the text tables), jobs (where the work runs: this process's device, or jobs
through submitit, --slurm or --gpu 0,1,...), settings, provenance, files, progress, data, cli,
checkpoints, validation, training, evaluation, autoattack_suite, running; each module's first line
says its job. The scripts at the top level
import the modules they need; no module imports one above it (tests/test_layout.py checks that the
imports run one way)."""
