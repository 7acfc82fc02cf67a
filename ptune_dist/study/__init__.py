"""`ptune study`: the power-of-scale study (Lester et al. 2021) as one command.

    ptune study CONFIG.yaml [...] [key=value ...] [--dry-run]   the cells, then the local queue, then the report
    ptune study status STUDY_DIR                                 how many cells are done, running, failed, pending
    ptune study report STUDY_DIR                                 results.csv and report/ from what is done
    ptune study ensemble STUDY_DIR                               prompt ensembles of the done seeds, then the report

The cells run on the grid engine `ptune sweep` uses too (ptune_dist/launcher/grid_cells.py: the cell folders, their
check and state; grid_queue.py: the local queue with retries; grid_arrays.py: Slurm arrays by resource shape;
grid_attempts.py: attempts.json; grid_table.py: results checked, tables written). What is the study's own:

cells.py         the grid: main (models x methods), length and init comparisons, over tasks and seeds
cell_configs.py  every cell's run config, checked, and the study folder written (folder.py: study.json)
precheck.py      each cell checked as its own `ptune train` checks before loading (dry run and before any run)
resources.py     each cell's GPUs and setup from the planner, for the cluster study.hardware describes
rows.py          one row per cell into results.csv (the task's main metric as score)
ensemble.py      prompt ensembles of the seeds (scored by ptune_dist/inference_ensemble.py), their records
report.py        the tables (report.md; ensemble_table.py, markdown.py) and plots.py the figures, from those rows
command.py       the command's forms
"""
