"""Report: every table and figure from a tiny hand-written sweep; numbers checked against the records."""

import shutil
from pathlib import Path

import pytest
import yaml

from prunekit import report
from prunekit.errors import RunError
from prunekit.runs import store
from tests.helpers import D_FF, EM, KEPT, make_sweep, write_checkpoint
from tests.helpers import write_records as _write


def md_table(md: str, heading: str) -> dict[str, dict[str, str]]:
    """The first Markdown table after the heading containing ``heading``: {row label: {column: cell}}."""
    block = md.split(heading, 1)[1].split("\n###", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {r[0]: dict(zip(header[1:], r[1:])) for r in rows}


def test_tables_match_the_records(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    result = report.build_report([sweep], tmp_path / "out")
    ((key, t),) = result["tables"].items()
    assert key == ("Qwen/Qwen2.5-Math-1.5B-Instruct", "math")
    assert t["metric"] == "gsm8k/em" and t["d_ff"] == D_FF

    # Table 2: requested vs real, from pruning.json
    t2 = t["table2"]
    for ratio, kept in KEPT.items():
        assert t2.loc[ratio, "real %"] == pytest.approx(100 * (D_FF - kept) / D_FF)
        assert t2.loc[ratio, "kept width"] == kept
    # Table 3: EM and trap %, each cell from its run's metrics.json
    for key_, em in EM.items():
        strategy, ratio, seed = (key_ + (42,))[:3]
        col = f"random-s{seed}" if strategy == "random" else strategy
        assert t["accuracy"].loc[ratio, col] == pytest.approx(100 * em)
        assert t["trap"].loc[ratio, col] == pytest.approx(100 * ratio / 5)
    assert t["baseline"] == pytest.approx(80.0)
    # eq. 3 relative loss, eq. 4 relative gain, eq. 5 ΔA
    assert t["relative_loss"].loc[0.1, "selective"] == pytest.approx(12.5)
    assert t["relative_loss"].loc[0.2, "reverse"] == pytest.approx(75.0)
    assert t["finetuned"].loc[0.1, "selective"] == pytest.approx(75.0)
    assert t["relative_gain"].loc[0.1, "selective"] == pytest.approx((75 - 70) / 70 * 100)
    assert t["delta"].loc[0.1, "ΔA"] == pytest.approx(70 - (60 + 50) / 2)
    assert t["delta"].loc[0.2, "ΔA"] == pytest.approx(50 - (30 + 20) / 2)
    assert (t["delta"]["random seeds"] == 2).all()
    # Table 5: resources averaged over the strategies at one ratio; the baseline is ratio 0
    assert t["table5"].loc[0.0, "peak mem GB"] == pytest.approx(3.0)
    assert t["table5"].loc[0.2, "tokens/s"] == pytest.approx(42.0)
    # Fig. 5 / Fig. 6 data
    assert t["sss"].loc[0.1, "reverse"] == pytest.approx(0.8)
    assert t["layers"]["target_dominant"].tolist() == [100, 200, 300]

    md = result["markdown"].read_text()
    t3 = md_table(md, "Table 3")
    assert t3["10 %"]["selective"] == "70.00 (2.00)" and t3["10 %"]["reverse"] == "40.00 (2.00)"
    assert t3["original"]["selective"] == "80.00 (1.00)"
    assert md_table(md, "Table 2")["20 %"] == {"requested %": "20.00", "real %": "20.00", "d_ff": "8960",
                                               "kept width": "7168"}
    assert md_table(md, "Relative accuracy loss")["10 %"]["selective"] == "12.50"
    assert md_table(md, "Relative gain")["10 %"]["selective"] == "7.14"
    assert md_table(md, "ΔA")["20 %"]["ΔA"] == "25.00"
    assert md_table(md, "Table 5")["original"]["tokens/s"] == "40.00"
    figs = result["figures"][key]
    assert sorted(figs) == ["fig1", "fig2", "fig3", "fig4", "fig5", "fig6"]
    for path in figs.values():
        assert path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({path.name})" in md


def test_finished_runs_are_reported_without_their_checkpoint_and_unfinished_ones_are_not(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    kept, deleted, unfinished = (sweep / f"ratio=0.1,strategy={s},seed=42" for s in ("selective", "reverse", "random"))
    for run in (kept, deleted, unfinished):
        (run / "complete-evaluate.json").unlink()
        write_checkpoint(run / "model")
    for run in (kept, deleted):
        store.mark_complete(run, "prune")
    shutil.rmtree(deleted / "model")  # the user freed disk after the run finished
    assert not store.is_complete(deleted, "prune")  # so resume redoes it ...
    found = report.find_run_dirs(sweep)
    assert kept in found and deleted in found  # ... but its results are still complete for the report
    assert unfinished not in found  # no marker: killed before its last step
    store.begin(kept, "prune")  # a redo that then fails drops the marker and the old metrics
    assert kept not in report.find_run_dirs(sweep)


def test_missing_numbers_say_na(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    for d in ("baseline", "finetune-selective-0.1"):
        for f in (sweep / d).iterdir():
            f.unlink()
        (sweep / d).rmdir()
    result = report.build_report([sweep], tmp_path / "out")
    (t,) = result["tables"].values()
    assert t["baseline"] is None and t["relative_loss"].empty and t["finetuned"].empty
    md = result["markdown"].read_text()
    assert "n/a: needs an evaluation of the original model" in md and "n/a: no fine-tuning runs" in md
    assert "fig1" not in result["figures"][next(iter(result["figures"]))]


def test_paper_numbers_beside_ours(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    md = report.build_report([sweep], tmp_path / "out", paper=True)["markdown"].read_text()
    assert "paper column: Qwen-1.5B Math" in md
    assert "82.11 (1.44)" in md          # Table 3, 10 %
    assert "84.0 (0.91)" in md           # Table 3, original
    assert "82.64 (1.14)" not in md      # Table 4 has no 5 % run here
    assert "82.18 (1.21)" in md          # Table 4, 10 %
    assert "2.90" in md and "46.21" in md  # Table 5, original


def test_empty_dir_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="no runs in"):
        report.build_report([tmp_path / "empty"])
    assert report.main([str(tmp_path / "empty")]) == 2
    assert "error: no runs in" in capsys.readouterr().err
    with pytest.raises(RunError, match="does not exist"):
        report.build_report([tmp_path / "missing"])


def test_mixed_sweeps_are_kept_apart(tmp_path):
    math_sweep = make_sweep(tmp_path / "math")
    code_sweep = make_sweep(tmp_path / "code", model="Qwen/Qwen2.5-Coder-1.5B-Instruct", task="code",
                            metric="humaneval/pass@1", scale=0.5)
    result = report.build_report([math_sweep, code_sweep], tmp_path / "out")
    assert set(result["tables"]) == {("Qwen/Qwen2.5-Math-1.5B-Instruct", "math"),
                                     ("Qwen/Qwen2.5-Coder-1.5B-Instruct", "code")}
    code = result["tables"][("Qwen/Qwen2.5-Coder-1.5B-Instruct", "code")]
    math_t = result["tables"][("Qwen/Qwen2.5-Math-1.5B-Instruct", "math")]
    assert code["metric"] == "humaneval/pass@1" and code["baseline"] == pytest.approx(40.0)
    assert math_t["baseline"] == pytest.approx(80.0)
    assert code["accuracy"].loc[0.1, "selective"] == pytest.approx(35.0)
    md = result["markdown"].read_text()
    assert "2 different model/task combinations" in md and "separate sections" in md
    names = {p.name for figs in result["figures"].values() for p in figs.values()}
    assert len(names) == 12  # 6 figures per section, none overwritten


def test_cli_writes_report_and_logs_figures_offline(tmp_path, monkeypatch, capsys):
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "_wandb_home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = make_sweep(tmp_path / "sweep")
    assert report.main([str(sweep), "--wandb", "--wandb-mode", "offline"]) == 0
    out = sweep / "report"
    assert (out / "report.md").is_file()
    images = list((out / "wandb").glob("offline-run-*/files/media/images/**/*.png"))
    assert len(images) == 6
    assert report.main([str(sweep), "--wandb", "--wandb-mode", "cloud"]) == 2
    assert "wandb.mode='cloud'" in capsys.readouterr().err


def _compose_experiment(name, overrides=()):
    from hydra import compose, initialize_config_dir
    conf = Path(__file__).resolve().parents[1] / "conf"
    main = yaml.safe_load((conf / "prune.yaml").read_text())
    listed = any(isinstance(d, dict) and "experiment" in d for d in main.get("defaults", []))
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="prune", overrides=[f"{'' if listed else '+'}experiment={name}", *overrides],
                       return_hydra_config=True)


@pytest.mark.parametrize("name, model, task", [
    ("paper_math_1.5b", "qwen2.5-math-1.5b", "math"), ("paper_math_7b", "qwen2.5-math-7b", "math"),
    ("paper_code_1.5b", "qwen2.5-coder-1.5b", "code"), ("paper_code_7b", "qwen2.5-coder-7b", "code")])
def test_paper_experiments_sweep_the_papers_grid(name, model, task, monkeypatch):
    from omegaconf import OmegaConf
    monkeypatch.setenv("PRUNEKIT_CACHE", "/tmp/prunekit-compose")
    cfg = _compose_experiment(name, ["strategy=random_s33"])
    assert (cfg.model.name, cfg.task.name, cfg.evaluate, cfg.task.target.n, cfg.capture.max_length) == (
        model, task, True, 800, 1024)  # the paper's capture settings: the math/code presets' n, prune.yaml's length
    assert cfg.capture.n is None and {d.n for d in cfg.task.distractors.values()} == {800}
    assert OmegaConf.to_container(cfg.strategy, resolve=True) == {"name": "random", "seed": 33}  # CLI picks the arm
    params = cfg.hydra.sweeper.params
    assert [float(r) for r in params.ratio.split(",")] == list(report.PAPER_RATIOS)
    arms = params.strategy.split(",")
    strategies = [OmegaConf.to_container(_compose_experiment(name, [f"strategy={a}"]).strategy, resolve=True)
                  for a in arms]
    assert strategies == [{"name": "selective"}, {"name": "reverse"}, {"name": "random", "seed": 42},
                          {"name": "random", "seed": 33}]


def test_detrimental_grid_picks_the_best_setting(tmp_path):
    model = "pip:smollm2-135m-instruct"
    cfg = {"model": {"name": "smol", "name_or_path": model}, "task": {"name": "math_offline"}}
    acc = {(3, 0.1): 0.40, (3, 0.2): 0.55, (7, 0.1): 0.55, (7, 0.2): 0.30}  # a tie: 0.55 at two settings
    for (layer, percent), value in acc.items():
        pruning = {"source_model": model, "strategy": "detrimental", "seed": 42, "ratio": 0.0, "real_ratio": 0.0,
                   "d_ff": 1536, "kept_width": 1536, "layer": layer, "percent": percent, "deactivated": []}
        _write(tmp_path / "grid" / f"layer={layer},percent={percent}", {"lmeval/copa/acc": value},
               {**cfg, "strategy": {"name": "detrimental", "layer": layer, "percent": percent}}, pruning)
    result = report.build_report([tmp_path / "grid"], tmp_path / "out")
    ((_, t),) = result["tables"].items()
    assert t["detrimental_grid"].loc[3, 0.2] == 0.55 and t["detrimental_grid"].loc[7, 0.1] == 0.55
    best = t["detrimental_best"]
    assert (best["layer"], best["percent"]) == (7, 0.1)  # tie -> the smaller percent
    md = Path(result["markdown"]).read_text()
    assert "Best setting: layer 7, percent 0.1" in md
    assert f"evaluate.py model.name_or_path={tmp_path / 'grid' / 'layer=7,percent=0.1'}/model" in md


def test_paper_yaml_is_complete_and_its_table2_is_our_arithmetic():
    """paper.yaml (package data) holds one row per nominal ratio (+ the original in Tables 3 and 5), and its
    Table 2 is what the 128-aligned width arithmetic gives for the paper's two widths."""
    from prunekit import surgery

    ratios = report.PAPER_RATIOS
    assert ratios == (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35)
    assert all(len(rows) == len(ratios) + 1 for rows in report.PAPER_TABLE3.values())
    assert all(len(rows) == len(ratios) for rows in report.PAPER_TABLE4.values())
    assert set(report.PAPER_TABLE3) == set(report.PAPER_TABLE4) == {
        f"Qwen-{size} {domain}" for size in report.PAPER_SIZES.values() for domain in ("Math", "Code")}
    assert all(len(v) == len(ratios) + 1 for pair in report.PAPER_TABLE5.values() for v in pair)
    for d_ff, real in report.PAPER_TABLE2.items():
        assert [round(100 * surgery.check_ratio(d_ff, r) / d_ff, 2) for r in ratios] == list(real)
    assert report.paper_column(8960, "humaneval/pass@1") == "Qwen-1.5B Code"
    assert report.PAPER_TABLE3["Qwen-1.5B Code"][0] == (62.80, 0.0)  # the original model's row comes first
