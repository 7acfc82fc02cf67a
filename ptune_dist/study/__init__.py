"""`ptune study`: the power-of-scale study (Lester et al. 2021) as one command.

    ptune study CONFIG.yaml [...] [key=value ...] [--dry-run]   the cells, then the local queue, then the report
    ptune study status STUDY_DIR                                 how many cells are done, running, failed, pending
    ptune study report STUDY_DIR                                 results.csv and report/ from what is done
    ptune study ensemble STUDY_DIR                               prompt ensembles of the done seeds, then the report

cells.py     the grid: main (models x methods), length and init comparisons, over tasks and seeds
prepare.py   every cell's run config, checked, and the study folder written (folder.py)
precheck.py  each cell checked as its own `ptune train` checks before loading (dry run and before any run)
resources.py each cell's GPUs and setup from the planner, for the cluster study.hardware describes
queue.py     the cells on this machine one after another: done ones skipped, failed ones retried
arrays.py    the cells on Slurm: one job array per resource shape, then a report job; record.py their attempts
gather.py    one row per cell into results.csv (the task's main metric as score)
ensemble.py  prompt ensembles: each seed's prompt in one batch on one base, a majority vote (ensemble_table.py)
report.py    the tables (report.md) and plots.py the figures, from those rows
"""
