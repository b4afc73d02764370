"""Result tables in the paper's layout (Markdown + JSON) and the plots people would rather look at.

  Table 1 (GTZAN):         Model | Mean Accuracy ± STD (%)
  Table 2 (MTG-Jamendo):   Model | genre | mood/theme | instrument   (macro ROC-AUC ± STD, then PR-AUC)
  Table 3 (continuation):  Model | nDCG@100 | MAP@100, with the random row
"""

from __future__ import annotations

import json
import os

import numpy as np

from tfcmir import safeio

JAMENDO_COLUMNS = (("genre", "genre"), ("moodtheme", "mood/theme"), ("instrument", "instrument"))


def _pm(mean, std, scale=1.0, digits=3):
  return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def gtzan_table(results):
  """results: {model: {'accuracy_mean', 'accuracy_std'}} -> Markdown (accuracy in %)."""
  lines = ["| Model | Mean Accuracy ± STD (%) |", "|---|---|"]
  for model, r in results.items():
    lines.append(f"| {model} | {_pm(r['accuracy_mean'], r['accuracy_std'], 100, 2)} |")
  return "\n".join(lines)


def jamendo_table(results):
  """results: {model: {category: {'roc_auc_mean', 'roc_auc_std', 'pr_auc_mean', 'pr_auc_std'}}}."""
  header = " | ".join(f"{label} ROC-AUC" for _, label in JAMENDO_COLUMNS)
  header_pr = " | ".join(f"{label} PR-AUC" for _, label in JAMENDO_COLUMNS)
  lines = [f"| Model | {header} | {header_pr} |", "|---|" + "---|" * (2 * len(JAMENDO_COLUMNS))]
  for model, by_category in results.items():
    roc = [(_pm(by_category[c]["roc_auc_mean"], by_category[c]["roc_auc_std"])
            if c in by_category else "") for c, _ in JAMENDO_COLUMNS]
    pr = [(_pm(by_category[c]["pr_auc_mean"], by_category[c]["pr_auc_std"])
           if c in by_category else "") for c, _ in JAMENDO_COLUMNS]
    lines.append(f"| {model} | {' | '.join(roc)} | {' | '.join(pr)} |")
  return "\n".join(lines)


def continuation_table(results):
  """results: {model: {'ndcg@K', 'map@K', 'random': {...}}}; the random row is added once."""
  first = next(iter(results.values()))
  k = next(key for key in first if key.startswith("ndcg@")).split("@")[1]
  ndcg, ap = f"ndcg@{k}", f"map@{k}"
  lines = [f"| Model | nDCG@{k} | MAP@{k} |", "|---|---|---|"]
  random_row = None
  for model, r in results.items():
    lines.append(f"| {model} | {r[ndcg]:.4f} | {r[ap]:.4f} |")
    random_row = random_row or r.get("random")
  if random_row:
    lines.append(f"| random | {random_row[ndcg]:.4f} | {random_row[ap]:.4f} |")
  return "\n".join(lines)


TABLES = {"gtzan": gtzan_table, "jamendo": jamendo_table, "continuation": continuation_table}


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, np.generic):
    return obj.item()
  return obj


def save_report(out_dir, task, results):
  """Writes {task}.md and {task}.json to out_dir; returns the Markdown table."""
  os.makedirs(out_dir, exist_ok=True)
  table = TABLES[task](results)
  for name, text in ((f"{task}.md", table + "\n"),
                     (f"{task}.json", json.dumps(_jsonable(results), indent=1))):
    safeio.write_text(os.path.join(out_dir, name), text)
  return table


def plot_confusion(confusion, classes, path, title):
  """A confusion matrix (rows: true genre, columns: predicted) as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  confusion = np.asarray(confusion, np.float64)
  share = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(6.5, 5.5))
  image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
  ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
  ax.set_yticks(range(len(classes)), classes)
  for i in range(len(classes)):
    for j in range(len(classes)):
      if confusion[i, j]:
        ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                color="white" if share[i, j] > 0.5 else "black")
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  fig.colorbar(image, ax=ax, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_embedding_map(embeddings, labels, path, title, seed=0):
  """A 2-D map of track embeddings (PCA of standardised vectors), coloured by label, as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from sklearn.decomposition import PCA
  x = np.asarray(embeddings, np.float64)
  x = (x - x.mean(0)) / (x.std(0) + 1e-9)
  points = PCA(2, random_state=seed).fit_transform(x)
  labels = np.asarray(labels)
  fig, ax = plt.subplots(figsize=(6.5, 5.5))
  colors = plt.get_cmap("tab10")
  for k, label in enumerate(sorted(set(labels.tolist()))):
    mask = labels == label
    ax.scatter(points[mask, 0], points[mask, 1], s=14, color=colors(k % 10), label=label, alpha=0.8)
  ax.legend(fontsize=7, markerscale=1.2, loc="best")
  ax.set_title(title)
  ax.set_xticks([])
  ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
