"""issue 21: a sweep cell's results.json is read back with each value's type: a metric that is not a
number makes the cell's row `damaged` (named on stderr), never a row of text posing as a result."""

import json

from ptune_dist.launcher.grid_table import results_problem
from ptune_dist.launcher.sweep_table import gather


def test_a_metric_that_is_not_a_number_is_a_damaged_row(tmp_path, capsys):
    cells = [
        {"id": f"00{i}", "overrides": [f"train.lr={lr}"], "dir": f"cells/00{i}"} for i, lr in enumerate(("0.1", "0.2"))
    ]
    (tmp_path / "sweep.json").write_text(json.dumps({"grid": {"train.lr": ["0.1", "0.2"]}, "cells": cells}))
    for i, acc in enumerate((0.9, "0.9")):
        (tmp_path / "cells" / f"00{i}").mkdir(parents=True)
        (tmp_path / "cells" / f"00{i}" / "results.json").write_text(json.dumps({"final": {"t": {"accuracy": acc}}}))
    table = gather(tmp_path).read_text()
    assert "001,0.2,damaged" in table and "000,0.1,done,t,0.9" in table, table
    assert "cell 001" in capsys.readouterr().err
    assert results_problem({"final": {"t": {"accuracy": True}}}) == '"final" t.accuracy=True is not a number'
    assert results_problem({"final": {"t": {"loss": 1.5}}, "baseline": {"t": {"loss": [1]}}}).startswith('"baseline"')
