"""Report tables in the paper's layout, their JSON twins, and the plots."""

import json

import numpy as np

from tfcmir.evaluate import report


def test_tables_follow_the_papers_layout(tmp_path):
  gtzan = {"Contr_CF-G": {"accuracy_mean": 0.7529, "accuracy_std": 0.0132},
           "B-line_CF-G": {"accuracy_mean": 0.6435, "accuracy_std": 0.011}}
  table = report.save_report(str(tmp_path), "gtzan", gtzan)
  assert table.splitlines()[2] == "| Contr_CF-G | 75.29 ± 1.32 |"  # Table 1 reports percent
  assert json.load(open(tmp_path / "gtzan.json"))["B-line_CF-G"]["accuracy_mean"] == 0.6435
  assert (tmp_path / "gtzan.md").read_text().startswith("| Model | Mean Accuracy")
  cont = {"Contr_CF-G": {"ndcg@100": 0.0085, "map@100": 0.002,
                         "random": {"ndcg@100": 0.0005, "map@100": 0.0001}},
          "B-line_CF-G": {"ndcg@100": 0.0042, "map@100": 0.0008,
                          "random": {"ndcg@100": 0.0005, "map@100": 0.0001}}}
  lines = report.continuation_table(cont).splitlines()
  assert lines[0] == "| Model | nDCG@100 | MAP@100 |"
  assert lines[-1] == "| random | 0.0005 | 0.0001 |" and len(lines) == 5  # one random row
  jam = {"Contr_CF-G": {c: {"roc_auc_mean": 0.84, "roc_auc_std": 0.01, "pr_auc_mean": 0.2,
                            "pr_auc_std": 0.02, "roc_aucs": np.array([0.83, 0.85])}
                        for c in ("genre", "moodtheme", "instrument")}}
  report.save_report(str(tmp_path), "jamendo", jam)
  assert "| Contr_CF-G | 0.840 ± 0.010 | 0.840 ± 0.010 | 0.840 ± 0.010 | 0.200 ± 0.020" in \
      (tmp_path / "jamendo.md").read_text()
  assert json.load(open(tmp_path / "jamendo.json"))["Contr_CF-G"]["genre"]["roc_aucs"] == [0.83, 0.85]


def test_plots_are_written_as_png(tmp_path):
  report.plot_confusion(np.array([[5, 1], [2, 4]]), ["blues", "jazz"], tmp_path / "c.png", "test")
  rng = np.random.default_rng(0)
  report.plot_embedding_map(rng.normal(size=(30, 8)), ["a", "b", "c"] * 10, tmp_path / "m.png", "m")
  for name in ("c.png", "m.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
